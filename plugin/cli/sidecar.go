package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// SidecarEnv names the environment variable that points at the sidecar binary.
const SidecarEnv = "M3GATE_SIDECAR"

// SidecarName is the file name of the sidecar binary.
func SidecarName() string {
	if runtime.GOOS == "windows" {
		return "m3gate-sidecar.exe"
	}
	return "m3gate-sidecar"
}

// LocateSidecar finds the m3gate-sidecar binary. It looks, in order, at
// $M3GATE_SIDECAR (from env), at configured (config sidecar.path), next to
// the running executable, and on $PATH (from env). An explicitly named
// binary that is missing is an error, not a reason to look further.
func LocateSidecar(env []string, configured string) (string, error) {
	if p, ok := lookupEnv(env, SidecarEnv); ok && p != "" {
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("sidecar from $%s: %w", SidecarEnv, err)
		}
		return p, nil
	}
	if configured != "" {
		if err := checkExecutable(configured); err != nil {
			return "", fmt.Errorf("sidecar from config sidecar.path: %w", err)
		}
		return configured, nil
	}
	looked := []string{"$" + SidecarEnv, "config sidecar.path"}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), SidecarName())
		if checkExecutable(p) == nil {
			return p, nil
		}
		looked = append(looked, filepath.Dir(exe))
	}
	pathVar, _ := lookupEnv(env, "PATH")
	for _, dir := range filepath.SplitList(pathVar) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, SidecarName())
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	looked = append(looked, "$PATH")
	return "", fmt.Errorf("%s not found (looked at %s): build it with `make build` "+
		"(it lands in bin/ next to m3gate), or set $%s or sidecar.path in config.yaml",
		SidecarName(), strings.Join(looked, ", "), SidecarEnv)
}

func checkExecutable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s is a directory", p)
	}
	if runtime.GOOS != "windows" && st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", p)
	}
	return nil
}

// RunSidecar runs the sidecar binary as a subprocess with args, connected to
// the app's stdin, stdout and stderr. A non-zero exit of the sidecar becomes
// an *ExitCodeError with the same code. Cancelling ctx sends SIGTERM and,
// after 10 s, kills the process. On Linux the sidecar is killed when m3gate
// dies.
func RunSidecar(ctx context.Context, app *App, args ...string) error {
	bin, err := LocateSidecar(app.Env, app.Config.Sidecar.Path)
	if err != nil {
		return err
	}
	// The sidecar gets the parent-death signal where there is one; it is
	// sent when the starting thread exits, so stay on it until Wait returns.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = app.Stdin, app.Stdout, app.Stderr
	cmd.Env = app.Env
	cmd.SysProcAttr = sidecarProcAttr()
	cmd.Cancel = func() error {
		if runtime.GOOS == "windows" {
			return cmd.Process.Kill()
		}
		return cmd.Process.Signal(syscall.SIGTERM)
	}
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("%s %s: %w", filepath.Base(bin), args[0], ctx.Err())
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return &ExitCodeError{Code: ee.ExitCode()}
	default:
		return fmt.Errorf("run %s: %w", bin, err)
	}
}
