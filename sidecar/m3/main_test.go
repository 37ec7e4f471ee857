package m3

import (
	"os"
	"testing"
)

var tmpRoot string

func tempDir() (string, error) { return os.MkdirTemp(tmpRoot, "tiny") }

func TestMain(m *testing.M) {
	var err error
	if tmpRoot, err = os.MkdirTemp("", "m3test"); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(tmpRoot)
	os.Exit(code)
}
