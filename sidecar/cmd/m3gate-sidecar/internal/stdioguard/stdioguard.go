// Package stdioguard keeps the sidecar's stdout clean for go-plugin's
// handshake line. Imported for its side effect by m3gate-sidecar's main, it
// runs as early as Go allows (it depends only on os, syscall and package
// openmp, which must run before it) and, when the process was started by
// go-plugin, points file descriptor 1 at stderr so that anything libtorch
// or other C code prints lands in the log, while os.Stdout keeps a private
// handle on the real stdout for the handshake.
package stdioguard

import (
	"os"
	"syscall"

	// openmp may re-execute the process; it must do so before this
	// package points fd 1 elsewhere (the import makes it initialise
	// first).
	_ "github.com/m3gate/m3gate/sidecar/cmd/m3gate-sidecar/internal/openmp"
)

// CookieKey is the go-plugin magic cookie variable of m3gate
// (schemas.Handshake.MagicCookieKey; a test keeps the two equal).
const CookieKey = "M3GATE_SIDECAR_PLUGIN"

// Active reports whether the guard redirected fd 1.
var Active bool

func init() {
	if os.Getenv(CookieKey) == "" {
		return
	}
	real, err := syscall.Dup(1)
	if err != nil {
		return
	}
	if err := syscall.Dup3(2, 1, 0); err != nil {
		syscall.Close(real)
		return
	}
	syscall.CloseOnExec(real)
	os.Stdout = os.NewFile(uintptr(real), "/dev/stdout")
	Active = true
}
