//go:build unix

package pipeline

import (
	"bytes"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestWriterFilesFollowUmask: accepted images and results.jsonl get mode
// 0666 less the umask, like the files of any tool.
func TestWriterFilesFollowUmask(t *testing.T) {
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, 2, 2))); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		umask int
		want  os.FileMode
	}{{0o022, 0o644}, {0o027, 0o640}, {0o002, 0o664}} {
		old := syscall.Umask(tt.umask)
		dir := t.TempDir()
		w, err := newWriter(dir, false)
		if err != nil {
			syscall.Umask(old)
			t.Fatal(err)
		}
		path, err := w.image(false, &attempt{job: 1, try: 1, seeds: []uint64{7}}, &Image{Data: buf.Bytes(), Node: "9"}, Metadata{})
		w.close()
		syscall.Umask(old)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{path, filepath.Join(dir, ResultsFile)} {
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Mode().Perm(); got != tt.want {
				t.Errorf("umask %03o: %s mode %04o, want %04o", tt.umask, filepath.Base(p), got, tt.want)
			}
		}
	}
}
