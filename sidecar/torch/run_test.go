package torch

import (
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/sugarme/gotch/ts"
)

// TestRunOnePassThread: passes from many goroutines, nested ones
// included, all run on the same OS thread, one at a time.
func TestRunOnePassThread(t *testing.T) {
	var mu sync.Mutex
	tids := map[int]int{}
	running, most := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				err := Run("outer", false, func() error {
					mu.Lock()
					running++
					most = max(most, running)
					tids[syscall.Gettid()]++
					mu.Unlock()
					// A nested Run runs in place (waiting for the pass
					// thread here would never end).
					err := Run("inner", true, func() error {
						mu.Lock()
						tids[syscall.Gettid()]++
						mu.Unlock()
						return nil
					})
					mu.Lock()
					running--
					mu.Unlock()
					return err
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if len(tids) != 1 {
		t.Errorf("passes ran on %d OS threads (%v), want 1", len(tids), tids)
	}
	for _, n := range tids {
		if n != 8*20*2 {
			t.Errorf("%d passes on the pass thread, want %d", n, 8*20*2)
		}
	}
	if most != 1 {
		t.Errorf("%d passes ran at once, want 1", most)
	}
}

// TestRunGoexit: a pass that ends its goroutine (t.FailNow inside Run)
// ends the caller's goroutine, not the process's passes.
func TestRunGoexit(t *testing.T) {
	ended := make(chan bool)
	go func() {
		returned := false
		defer func() { ended <- returned }()
		Run("exit", false, func() error {
			defer func() { recover() }() // Goexit is not a panic: nothing to recover
			exitGoroutine()
			return nil
		})
		returned = true
	}()
	if <-ended {
		t.Fatal("Run returned after its pass called runtime.Goexit")
	}
	// The passes go on, on a new pass thread.
	n := 0
	for range 3 {
		if err := Run("after", false, func() error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if n != 3 {
		t.Errorf("%d passes ran after the exit, want 3", n)
	}
	if err := Run("panic", false, func() error { panic("boom") }); err == nil || !strings.Contains(err.Error(), "panic: boom") {
		t.Errorf("a panicking pass: %v, want panic: boom", err)
	}
}

func TestCopyOut(t *testing.T) {
	x := ts.MustOfSlice([]float32{1, 2, 3, 4, 5, 6}).MustView([]int64{2, 3}, true)
	defer Drop(x)
	xt := x.MustT(false) // not contiguous: copied in row-major order
	defer Drop(xt)
	got := make([]float32, 6)
	if err := CopyOut(xt, got); err != nil {
		t.Fatal(err)
	}
	for i, want := range []float32{1, 4, 2, 5, 3, 6} {
		if got[i] != want {
			t.Fatalf("got %v, want [1 4 2 5 3 6]", got)
		}
	}
	if err := CopyOut(x, make([]float32, 5)); err == nil || !strings.Contains(err.Error(), "6 values, destination 5") {
		t.Errorf("short destination: %v", err)
	}
	if err := CopyOut(x, make([]float64, 6)); err == nil || !strings.Contains(err.Error(), "destination") {
		t.Errorf("wrong element type: %v", err)
	}
}

// exitGoroutine is runtime.Goexit, kept apart so that vet sees no
// unreachable code after it.
var exitGoroutine = runtime.Goexit

// TestBLASIsOpenMP: where Debian's OpenMP build of OpenBLAS is installed
// (scripts/setup.sh installs it), the binary loads it rather than the
// system's default pthreads build (see blas.go).
func TestBLASIsOpenMP(t *testing.T) {
	matches, _ := filepath.Glob("/usr/lib/*-linux-gnu/openblas-openmp/libblas.so.3")
	if len(matches) == 0 {
		t.Skip("libopenblas0-openmp is not installed")
	}
	got := BLAS()
	if !strings.Contains(got, "/openblas-openmp/") {
		t.Errorf("BLAS() = %q, want the openblas-openmp build", got)
	}
}
