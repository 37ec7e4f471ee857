package openmp

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestEnv(t *testing.T) {
	for _, tt := range []struct {
		name    string
		environ []string
		changed bool
	}{
		{"nothing set", []string{"HOME=/root", "PATH=/bin"}, true},
		{"empty", nil, true},
		{"wait policy set", []string{"OMP_WAIT_POLICY=PASSIVE"}, false},
		{"spin count set", []string{"PATH=/bin", "GOMP_SPINCOUNT=300000"}, false},
		{"a longer name", []string{"GOMP_SPINCOUNTS=1"}, true},
	} {
		got, changed := Env(tt.environ)
		if changed != tt.changed {
			t.Errorf("%s: changed %v, want %v", tt.name, changed, tt.changed)
		}
		want := tt.environ
		if tt.changed {
			want = append(append([]string(nil), tt.environ...), "GOMP_SPINCOUNT="+SpinCount)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: got %q, want %q", tt.name, got, want)
		}
	}
}

// helperEnv marks this test binary run as the helper of TestReexec.
const helperEnv = "OPENMP_TEST_HELPER"

// TestReexecHelper is the process TestReexec starts: by the time it runs,
// the package's init has done its work; it prints its PID, its arguments'
// count and its GOMP_SPINCOUNT.
func TestReexecHelper(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper of TestReexec")
	}
	fmt.Printf("pid=%d args=%d spin=%q\n", os.Getpid(), len(os.Args), os.Getenv("GOMP_SPINCOUNT"))
}

// TestReexec starts this test binary without OpenMP settings: it runs
// with GOMP_SPINCOUNT set (in its environment before libgomp could read
// it, i.e. re-executed), as the same process with the same arguments and
// stdout; with OMP_WAIT_POLICY set it is left alone.
func TestReexec(t *testing.T) {
	var base []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OMP_WAIT_POLICY=") && !strings.HasPrefix(kv, "GOMP_SPINCOUNT=") {
			base = append(base, kv)
		}
	}
	for _, tt := range []struct {
		name  string
		extra []string
		spin  string
	}{
		{"unset", nil, SpinCount},
		{"passive", []string{"OMP_WAIT_POLICY=PASSIVE"}, ""},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestReexecHelper$", "-test.v")
		cmd.Env = append(append(append([]string(nil), base...), helperEnv+"=1"), tt.extra...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		want := fmt.Sprintf("pid=%d args=3 spin=%q", cmd.Process.Pid, tt.spin)
		if !strings.Contains(string(out), want) {
			t.Errorf("%s: the helper printed %q, want %q", tt.name, out, want)
		}
	}
}
