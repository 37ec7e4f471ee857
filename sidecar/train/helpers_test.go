package train

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/sidecar/mllm"
)

var (
	tinyOnce sync.Once
	tinyDir  string
	tinyErr  error
	testRoot string
)

// skipShort skips a test that runs whole training jobs under go test
// -short (make test runs it).
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs training jobs; skipped with -short")
	}
}

func TestMain(m *testing.M) {
	var err error
	testRoot, err = os.MkdirTemp("", "train-test-")
	if err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(testRoot)
	os.Exit(code)
}

// tinyModelDir writes a seeded tiny Idefics3 model once per test binary.
func tinyModelDir(t testing.TB) string {
	t.Helper()
	tinyOnce.Do(func() {
		tinyDir = filepath.Join(testRoot, "tiny")
		tinyErr = mllm.WriteTiny(tinyDir, "tiny", 11)
	})
	if tinyErr != nil {
		t.Fatal(tinyErr)
	}
	return tinyDir
}

func loadTiny(t testing.TB) *mllm.Model {
	t.Helper()
	m, err := mllm.Load(tinyModelDir(t), mllm.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// sharedAGIQA returns the shared AGIQA-3K folder (testenv.SharedData),
// skipping the test when it is absent.
func sharedAGIQA(t testing.TB) string {
	t.Helper()
	dir := testenv.DataDir(t)
	for _, f := range []string{"conversations.jsonl", "data.csv", "images"} {
		testenv.SharedData(t, "agiqa-3k/"+f)
	}
	return filepath.Join(dir, "agiqa-3k")
}

// subset writes the first n records of aspect and split of the shared
// conversations to a new JSONL file per (aspect, split) list and returns its
// path; records carry no MOS (tests join data.csv).
func subset(t testing.TB, dir string, picks map[string]int, aspect string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "conversations.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := filepath.Join(t.TempDir(), "conversations.jsonl")
	w, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	left := map[string]int{}
	for k, v := range picks {
		left[k] = v
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		sp, _ := r["split"].(string)
		if r["aspect"] != aspect || left[sp] == 0 {
			continue
		}
		left[sp]--
		if _, err := w.Write(append(append([]byte(nil), sc.Bytes()...), '\n')); err != nil {
			t.Fatal(err)
		}
	}
	return out
}
