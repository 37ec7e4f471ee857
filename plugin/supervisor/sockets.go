package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/hashicorp/go-plugin"
)

// Each sidecar process creates its go-plugin socket in a folder of its own
// below socketBase, named "<pid of this process>-<random>". The folder is
// removed when the process exits; a process killed with SIGKILL cannot
// remove its socket, so the folder goes with it, and the folders of
// supervisors that were killed themselves are removed by the next start.

// socketBase is $TMPDIR/m3gate-sockets-<uid>, private to the user.
func socketBase() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("m3gate-sockets-%d", os.Getuid()))
}

// newSocketDir removes stale socket folders below base and creates a new
// one for a sidecar process of this process.
func newSocketDir(base string) (string, error) {
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", err
	}
	// Refuse a folder someone else prepared in the shared temp folder.
	st, err := os.Lstat(base)
	if err != nil {
		return "", err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || !ok || int(sys.Uid) != os.Getuid() || st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("socket folder %s is not a private folder of this user", base)
	}
	removeStaleSocketDirs(base)
	return os.MkdirTemp(base, strconv.Itoa(os.Getpid())+"-")
}

// removeStaleSocketDirs removes the folders below base whose supervisor
// process no longer runs, and returns how many it removed.
func removeStaleSocketDirs(base string) int {
	ents, err := os.ReadDir(base)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		pidText, _, ok := strings.Cut(e.Name(), "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid <= 0 || processRuns(pid) {
			continue
		}
		if os.RemoveAll(filepath.Join(base, e.Name())) == nil {
			n++
		}
	}
	return n
}

// processRuns reports whether a process with this pid exists.
func processRuns(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// socketEnv is the environment entry that points go-plugin's server in the
// sidecar at dir.
func socketEnv(dir string) string { return plugin.EnvUnixSocketDir + "=" + dir }
