package cli

import "testing"

func TestLoopbackOnly(t *testing.T) {
	tests := []struct {
		listen string
		want   bool
	}{
		{"127.0.0.1:8190", true},
		{"[::1]:8190", true},
		{"localhost:8190", true},
		{"127.0.0.2:0", true},
		{"0.0.0.0:8190", false},
		{":8190", false},
		{"[::]:8190", false},
		{"192.168.1.5:8190", false},
		{"comfy.lan:8190", false},
	}
	for _, tt := range tests {
		if got := loopbackOnly(tt.listen); got != tt.want {
			t.Errorf("loopbackOnly(%q) = %v, want %v", tt.listen, got, tt.want)
		}
	}
}
