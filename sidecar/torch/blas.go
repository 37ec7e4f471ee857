package torch

// Debian's libtorch calls BLAS through libblas.so.3, which the system's
// alternatives point at OpenBLAS built with its own pthreads pool. That
// pool and libtorch's OpenMP pool each keep their workers spinning after
// a call, and on a 2-core machine they take turns stealing each other's
// cores: with all passes on one thread (Run), the 256M vision tower took
// 3.0–3.3 s and a 214-token prefill 1.5 s, against 1.6–1.7 s and 0.34 s
// with OpenBLAS built for OpenMP, which runs its products on libtorch's
// own pool (BenchmarkVisionEncode256M, BenchmarkPrefill256M, alternating
// runs). The binaries that link this package therefore look for BLAS in
// Debian's openblas-openmp folder first (libopenblas0-openmp, installed
// by scripts/setup.sh) without changing the system's choice: an RPATH
// (not a RUNPATH: only an RPATH also serves libtorch's own dependencies)
// names the folder, and where it is missing the loader goes on to the
// system's libblas.so.3.

/*
#cgo linux,amd64 LDFLAGS: -Wl,--disable-new-dtags -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp
#cgo linux,arm64 LDFLAGS: -Wl,--disable-new-dtags -Wl,-rpath,/usr/lib/aarch64-linux-gnu/openblas-openmp
*/
import "C"

import (
	"bufio"
	"os"
	"strings"
)

// BLAS returns the path of the BLAS library the process loaded (the
// library libblas.so.3 resolved to), or "" when none is mapped.
func BLAS() string {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 6 {
			continue
		}
		path := fields[len(fields)-1]
		if strings.Contains(path, "/libblas.so") || strings.Contains(path, "/libopenblas") {
			return path
		}
	}
	return ""
}
