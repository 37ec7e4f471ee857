package comfyfake

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/nodes"
	"github.com/m3gate/m3gate/plugin/comfyui"
)

// sharedObjectInfo is the recording of a real v0.3.64 server's
// /object_info, beside the repository.
var sharedObjectInfo = filepath.Join("..", "..", "..", "..", "shared", "fixtures", "comfyui", "object_info-v0.3.64.json")

func get(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return b
}

// TestObjectInfoIsTheRealServers: the embedded copy is the recording, and
// GET /object_info answers it byte for byte in the server's own encoding
// (Python's json.dumps of the recorded object, checked with Python itself
// when it is installed), stock classes first in the server's order, then
// the classes a test registers.
func TestObjectInfoIsTheRealServers(t *testing.T) {
	if rec, err := os.ReadFile(sharedObjectInfo); err != nil {
		t.Logf("recording not found (%v); checking the embedded copy only", err)
	} else if !bytes.Equal(rec, objectInfoJSON) {
		t.Fatalf("object_info.json differs from %s: copy it again", sharedObjectInfo)
	}
	want, err := nodes.PythonJSON(objectInfoJSON)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		cmd := exec.Command("/usr/bin/python3", "-c", "import json, sys; sys.stdout.write(json.dumps(json.load(open(sys.argv[1]))))", "object_info.json")
		if py, err := cmd.Output(); err != nil {
			t.Fatalf("python3: %v", err)
		} else if !bytes.Equal(py, want) {
			t.Fatal("nodes.PythonJSON differs from Python's json.dumps on the recording")
		}
	}
	m3 := nodes.Default().ObjectInfoJSON()
	var m3info map[string]json.RawMessage
	if err := json.Unmarshal(m3, &m3info); err != nil {
		t.Fatal(err)
	}
	s := New(WithNodeClass(nodes.ClassScore, m3info[nodes.ClassScore]))
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	got := get(t, srv.URL+"/object_info")
	stock := want[:len(want)-1] // the recording without its closing brace
	if !bytes.HasPrefix(got, stock) {
		n := 0
		for n < len(got) && n < len(stock) && got[n] == stock[n] {
			n++
		}
		t.Fatalf("GET /object_info differs from the recording at byte %d: %.120q", n, got[n:])
	}
	entry, err := nodes.PythonJSON(m3info[nodes.ClassScore])
	if err != nil {
		t.Fatal(err)
	}
	if tail := string(got[len(stock):]); tail != `, "M3Score": `+string(entry)+"}" {
		t.Errorf("after the stock classes: %.200q", tail)
	}
	// One class, under /api too, as the server encodes it.
	one := get(t, srv.URL+"/api/object_info/SaveImageWebsocket")
	if !strings.HasPrefix(string(one), `{"SaveImageWebsocket": {"input": {"required": {"images": ["IMAGE"]}}`) ||
		!strings.Contains(string(one), `"python_module": "custom_nodes.websocket_image_save", "category": "api/image"`) {
		t.Errorf("GET /object_info/SaveImageWebsocket = %s", one)
	}
	if b := get(t, srv.URL+"/object_info/NoSuchNode"); string(b) != "{}" {
		t.Errorf("unknown class: %s", b)
	}
}

// TestObjectInfoListsTheInputFolder: LoadImage's choices are the files in
// the input folder, as the real node lists them, and a prompt may name an
// uploaded file that the recording did not have.
func TestObjectInfoListsTheInputFolder(t *testing.T) {
	s := New()
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	if b := get(t, srv.URL+"/object_info/LoadImage"); !strings.Contains(string(b), `"image": [["example.png"], {"image_upload": true}]`) {
		t.Fatalf("LoadImage before an upload: %s", b)
	}
	s.mu.Lock()
	s.files[fileKey{"input", "", "zebra é.png"}] = examplePNG()
	s.files[fileKey{"input", "", "apple.png"}] = examplePNG()
	s.files[fileKey{"input", "sub", "hidden.png"}] = examplePNG()
	s.mu.Unlock()
	b := get(t, srv.URL+"/object_info/LoadImage")
	if !strings.Contains(string(b), `"image": [["apple.png", "example.png", "zebra \u00e9.png"], {"image_upload": true}]`) {
		t.Errorf("LoadImage after uploads: %s", b)
	}
	wf := comfyuiWorkflow(t, `{"1": {"class_type": "LoadImage", "inputs": {"image": "apple.png"}},
		"2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}`)
	if errs := s.validateNode(wf, "1"); len(errs) != 0 {
		t.Errorf("uploaded file refused: %+v", errs)
	}
	wf["1"].Inputs["image"] = "missing.png"
	if errs := s.validateNode(wf, "1"); len(errs) != 1 || errs[0].Type != "custom_validation_failed" {
		t.Errorf("missing file: %+v, want one custom_validation_failed", errs)
	}
}

func comfyuiWorkflow(t *testing.T, s string) comfyui.Workflow {
	t.Helper()
	w, err := comfyui.ParseWorkflow([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return w
}
