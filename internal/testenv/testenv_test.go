package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

func TestModuleRootAndDataDir(t *testing.T) {
	root := ModuleRoot(t)
	if b, err := os.ReadFile(filepath.Join(root, "go.mod")); err != nil || len(b) == 0 {
		t.Fatalf("ModuleRoot = %s: no go.mod (%v)", root, err)
	}
	if got, want := filepath.Join(root, "internal", "testenv"), mustGetwd(t); got != want {
		t.Errorf("ModuleRoot = %s, want the folder two levels above %s", root, want)
	}
	t.Setenv(EnvData, "")
	if got, want := DataDir(t), filepath.Join(filepath.Dir(root), "shared", "data"); got != want {
		t.Errorf("DataDir = %s, want %s (../shared/data beside the module root)", got, want)
	}
	dir := t.TempDir()
	t.Setenv(EnvData, dir)
	if got := DataDir(t); got != dir {
		t.Errorf("DataDir with %s=%s: %s", EnvData, dir, got)
	}
	os.MkdirAll(filepath.Join(dir, "x"), 0o755)
	if got := SharedData(t, "x"); got != dir {
		t.Errorf("SharedData = %s, want %s", got, dir)
	}
}

func TestSharedDataSkipsWhenAbsent(t *testing.T) {
	t.Setenv(EnvData, t.TempDir())
	ok := t.Run("inner", func(t *testing.T) {
		SharedData(t, "agiqa-3k/data.csv")
		t.Error("SharedData did not skip")
	})
	if !ok {
		t.Error("inner test failed instead of skipping")
	}
}

func TestRequireSidecarResolvesRelative(t *testing.T) {
	t.Setenv(EnvSidecar, "go.mod") // a file relative to the module root
	if got, want := RequireSidecar(t), filepath.Join(ModuleRoot(t), "go.mod"); got != want {
		t.Errorf("RequireSidecar = %s, want %s", got, want)
	}
}

func mustGetwd(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}
