package stdioguard

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/m3gate/m3gate/schemas"
)

func TestCookieKeyMatchesHandshake(t *testing.T) {
	if CookieKey != schemas.Handshake.MagicCookieKey {
		t.Fatalf("CookieKey %q != schemas.Handshake.MagicCookieKey %q", CookieKey, schemas.Handshake.MagicCookieKey)
	}
}

// TestStrayOutputGoesToStderr re-runs the test binary with the cookie set:
// the guard is active there, C-level writes to fd 1 must reach stderr and
// only what goes through os.Stdout may reach the real stdout.
func TestStrayOutputGoesToStderr(t *testing.T) {
	if os.Getenv("STDIOGUARD_CHILD") == "1" {
		if !Active {
			fmt.Fprintln(os.Stderr, "guard not active")
			os.Exit(3)
		}
		syscall.Write(1, []byte("stray libtorch warning\n"))
		fmt.Fprint(os.Stdout, "1|1|unix|/tmp/sock|grpc|\n")
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStrayOutputGoesToStderr$")
	cmd.Env = append(os.Environ(), "STDIOGUARD_CHILD=1", CookieKey+"=x")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\n%s", err, stderr.String())
	}
	if got, want := stdout.String(), "1|1|unix|/tmp/sock|grpc|\n"; got != want {
		t.Errorf("stdout: got %q, want only the handshake line %q", got, want)
	}
	if !bytes.Contains(stderr.Bytes(), []byte("stray libtorch warning")) {
		t.Errorf("stderr lacks the stray output: %q", stderr.String())
	}
}
