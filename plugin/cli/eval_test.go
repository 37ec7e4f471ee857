package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEvalColumnsAndFitNote: --pred-col/--mos-col name other CSV columns,
// and a NaN PLCC(fit) comes with the reason.
func TestEvalColumnsAndFitNote(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "p.csv")
	if err := os.WriteFile(p, []byte("image,aspect,yhat,truth\r\na,quality,1,2\r\nb,quality,2,3.5\r\nc,quality,3,3\r\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, nil, "", "eval", "--predictions", p, "--out", filepath.Join(dir, "ev"), "--pred-col", "yhat", "--mos-col", "truth", "--bootstrap", "0")
	if code != ExitOK || !strings.Contains(out, "quality  3") {
		t.Fatalf("code %d\n%s\n%s", code, out, errOut)
	}
	if w := "m3gate: eval: quality: PLCC(fit) is NaN: fit logistic: need at least 5 pairs, have 3"; !strings.Contains(errOut, w) {
		t.Errorf("stderr lacks %q:\n%s", w, errOut)
	}
	code, _, errOut = run(t, nil, "", "eval", "--predictions", p, "--out", filepath.Join(dir, "ev2"))
	if code != ExitError || !strings.Contains(errOut, "no predicted column") || !strings.Contains(errOut, "the header has: image, aspect, yhat, truth") {
		t.Errorf("without --pred-col: %d %s", code, errOut)
	}
}
