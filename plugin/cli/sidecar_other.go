//go:build !linux

package cli

import "syscall"

// sidecarProcAttr has no parent-death signal outside Linux.
func sidecarProcAttr() *syscall.SysProcAttr { return nil }
