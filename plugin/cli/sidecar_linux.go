package cli

import "syscall"

// sidecarProcAttr makes the kernel SIGKILL a sidecar job when m3gate dies
// (kill -9, OOM kill), so an orphaned finetune or train-predictor never
// keeps writing to a folder that a rerun is resuming from. The signal is
// tied to the thread that started the child: RunSidecar stays on that
// thread until the child exits.
func sidecarProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
