package labels

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func write(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// keys lists the problems as "line: kind".
func keys(rep *Report) []string {
	var out []string
	for _, p := range rep.Problems {
		out = append(out, fmt.Sprintf("%d: %s", p.Line, p.Kind))
	}
	return out
}

const good = `{"image":"a.jpg","prompt":"p","aspect":"quality","round1":"r1","teacher_description":"d","round2":"r2","rating_word":"good"}`

// TestReadConversations checks that every bad line is reported with its
// file and line, good lines survive, and rating words are normalised.
func TestReadConversations(t *testing.T) {
	body := strings.Join([]string{
		good,
		strings.Replace(good, `"quality"`, `"correspondence"`, 1),
		good, // duplicate of line 1
		strings.NewReplacer(`"quality"`, `"beauty"`, `"good"`, `"great"`).Replace(good),
		strings.Replace(good, `"d"`, `" "`, 1),
		`{"image":"b.jpg"`, // half-written last line
		"",
		strings.NewReplacer(`"a.jpg"`, `"c.jpg"`, `"good"`, `" Fair "`).Replace(good),
		strings.Replace(strings.Replace(good, `"a.jpg"`, `"d.jpg"`, 1), `"rating_word"`, `"mos":5.5,"rating_word"`, 1),
		strings.Replace(strings.Replace(good, `"a.jpg"`, `"e.jpg"`, 1), `"rating_word"`, `"mos":2.25,"rating_word"`, 1),
	}, "\n")
	p := write(t, "c.jsonl", body)
	rep := &Report{}
	convs, err := ReadConversations(p, rep)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"3: duplicate", "4: parse", "4: parse", "5: missing-field", "6: parse", "9: range"}
	if got := keys(rep); !reflect.DeepEqual(got, want) {
		t.Errorf("problems\n got %v\nwant %v\n%v", got, want, rep.Problems)
	}
	for _, pr := range rep.Problems {
		if pr.File != p || !strings.HasPrefix(pr.String(), p+":") {
			t.Errorf("problem %v does not name the file", pr)
		}
	}
	if rep.Rows != 9 {
		t.Errorf("rows %d, want 9 (blank line not counted)", rep.Rows)
	}
	var got []string
	for _, c := range convs {
		got = append(got, c.Image+"/"+c.Aspect+"/"+c.RatingWord)
	}
	if want := []string{"a.jpg/quality/good", "a.jpg/correspondence/good", "c.jpg/quality/fair", "e.jpg/quality/good"}; !reflect.DeepEqual(got, want) {
		t.Errorf("records %v, want %v", got, want)
	}
	if convs[3].MOS == nil || *convs[3].MOS != 2.25 || convs[0].MOS != nil || convs[3].Line != 10 {
		t.Errorf("mos/line: %+v", convs[3])
	}
	if err := rep.Err(); err == nil || !strings.HasPrefix(err.Error(), "6 problems: ") || !strings.Contains(err.Error(), "and 1 more") {
		t.Errorf("Err() = %v", err)
	}
	if (&Report{}).Err() != nil {
		t.Error("empty report has an error")
	}
	if _, err := ReadConversations(filepath.Join(t.TempDir(), "nope.jsonl"), rep); err == nil {
		t.Error("missing file: no error")
	}
}

func TestWriteConversationRoundTrip(t *testing.T) {
	mos := 3.5
	c := Conversation{Image: "a<b>.jpg", Prompt: "p & q", Aspect: "quality", Round1: "r1", TeacherDescription: "d", Round2: "r2", RatingWord: "good", MOS: &mos}
	var buf bytes.Buffer
	if err := WriteConversation(&buf, c); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "a<b>.jpg") || !strings.HasSuffix(buf.String(), "}\n") {
		t.Errorf("line %q: HTML escaped or no newline", buf.String())
	}
	rep := &Report{}
	got, err := DecodeConversations(&buf, "mem", rep)
	if err != nil || len(rep.Problems) != 0 || len(got) != 1 {
		t.Fatalf("read back: %v %v %v", got, rep.Problems, err)
	}
	c.Line = 1
	if !reflect.DeepEqual(got[0], c) {
		t.Errorf("round trip\n got %+v\nwant %+v", got[0], c)
	}
}

func TestReadHeadedCSV(t *testing.T) {
	p := write(t, "d.csv", "\ufeffName,MOS_Quality\na.jpg,1\nb.jpg\n\"c.jpg,2\nd.jpg,3\n")
	rep := &Report{}
	var rows []string
	err := ReadHeadedCSV(p, rep, []string{"name"}, func(line int, row []string, cols map[string]int) {
		rows = append(rows, row[cols["name"]]+"@"+string(rune('0'+line)))
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a.jpg@2"}; !reflect.DeepEqual(rows, want) {
		t.Errorf("rows %v, want %v", rows, want)
	}
	if got := keys(rep); len(got) == 0 || got[0] != "3: parse" {
		t.Errorf("problems %v", rep.Problems)
	}
	for _, tc := range []struct{ body, want string }{
		{"", "empty file"},
		{"image,mos\na,1\n", "lacks columns [name]"},
	} {
		if err := ReadHeadedCSV(write(t, "e.csv", tc.body), &Report{}, []string{"name"}, func(int, []string, map[string]int) {}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want %q", tc.body, err, tc.want)
		}
	}
}

func TestReadMOS(t *testing.T) {
	csvPath := write(t, "data.csv", "name,prompt,mos_quality,std_quality,mos_align,std_align\nimgs/a.jpg,x,3.5,0.1,1.25,0.2\nb.jpg,\"y, z\",0.5,0.1,4.5,0.2\nc.jpg,x,9,0,1,0\nd.jpg,x,NaN,0,1,0\n")
	rep := &Report{}
	tab, err := ReadMOS(csvPath, rep)
	if err != nil {
		t.Fatal(err)
	}
	want := MOSTable{"a.jpg": {"quality": 3.5, "correspondence": 1.25}, "b.jpg": {"quality": 0.5, "correspondence": 4.5}}
	if !reflect.DeepEqual(tab, want) {
		t.Errorf("csv table %v, want %v", tab, want)
	}
	if got := keys(rep); !reflect.DeepEqual(got, []string{"4: range", "5: parse"}) {
		t.Errorf("csv problems %v", rep.Problems)
	}
	if v, ok := tab.Lookup("some/dir/b.jpg", "correspondence"); !ok || v != 4.5 {
		t.Errorf("Lookup = %v, %v", v, ok)
	}

	manPath := write(t, "m.jsonl", `{"image":"imgs/a.jpg","mos":{"quality":2}}`+"\n"+`{"name":"b.jpg","mos":{"beauty":2}}`+"\n{}\n"+`{"image":"c.jpg","mos":{"quality":-1}}`+"\n")
	rep = &Report{}
	tab, err = ReadMOS(manPath, rep)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(tab, MOSTable{"a.jpg": {"quality": 2}}) {
		t.Errorf("manifest table %v", tab)
	}
	if got := keys(rep); !reflect.DeepEqual(got, []string{"2: parse", "3: missing-field", "4: range"}) {
		t.Errorf("manifest problems %v", rep.Problems)
	}
}
