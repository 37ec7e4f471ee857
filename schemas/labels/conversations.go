package labels

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Conversation is one record of the conversations JSONL format (one line
// per image × aspect, as in the reference's distilled training data): the
// image, its generation prompt, the two questions, the teacher's
// description and the rating word, optionally the student's answers and a
// MOS label.
type Conversation struct {
	Image              string   `json:"image"`
	Prompt             string   `json:"prompt"`
	Aspect             string   `json:"aspect"`
	Split              string   `json:"split,omitempty"`
	Round1             string   `json:"round1"`
	TeacherDescription string   `json:"teacher_description"`
	Round2             string   `json:"round2"`
	RatingWord         string   `json:"rating_word"`
	StudentDescription string   `json:"student_description,omitempty"`
	StudentRatingWord  string   `json:"student_rating_word,omitempty"`
	MOS                *float64 `json:"mos,omitempty"` // 0–5 when the line carries a label

	// Line is the 1-based line the record was read from (0 when it was not
	// read from a file).
	Line int `json:"-"`
}

// Key identifies the conversation: image and aspect.
func (c Conversation) Key() string { return c.Image + "\x00" + c.Aspect }

// ReadConversations reads a conversations JSONL file (the format of
// shared/data/agiqa-3k/conversations.jsonl). Bad lines go to rep, one
// Problem per fault, and are left out: unparsable JSON, a blank image,
// aspect, round1, round2, teacher_description or rating_word, an unknown
// aspect, a rating word that is not one of iqa.RatingWords (case and
// surrounding space are ignored; the record carries the canonical word), a
// mos outside 0–5, and an image × aspect already read on an earlier line. A
// half-written last line (no trailing newline, unparsable) is reported like
// any other. The error is non-nil only when the file cannot be read.
func ReadConversations(path string, rep *Report) ([]Conversation, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read conversations: %w", err)
	}
	defer f.Close()
	return DecodeConversations(f, path, rep)
}

// DecodeConversations is ReadConversations on a reader; path names it in
// problems.
func DecodeConversations(r io.Reader, path string, rep *Report) ([]Conversation, error) {
	var out []Conversation
	seen := map[string]int{}
	err := rep.Lines(r, func(line int, b []byte) {
		var c Conversation
		if err := json.Unmarshal(b, &c); err != nil {
			rep.Add(path, line, KindParse, "%v", err)
			return
		}
		c.Line = line
		if !c.check(path, rep) {
			return
		}
		if prev, dup := seen[c.Key()]; dup {
			rep.Add(path, line, KindDuplicate, "image %q aspect %s already on line %d", c.Image, c.Aspect, prev)
			return
		}
		seen[c.Key()] = line
		out = append(out, c)
	})
	if err != nil {
		return nil, fmt.Errorf("read conversations %s: %w", path, err)
	}
	return out, nil
}

// check reports every fault of c to rep and normalises its rating word.
func (c *Conversation) check(path string, rep *Report) bool {
	ok := true
	for _, f := range []struct{ name, v string }{
		{"image", c.Image}, {"aspect", c.Aspect}, {"round1", c.Round1}, {"round2", c.Round2},
		{"teacher_description", c.TeacherDescription}, {"rating_word", c.RatingWord},
	} {
		if strings.TrimSpace(f.v) == "" {
			rep.Add(path, c.Line, KindMissingField, "empty %s", f.name)
			ok = false
		}
	}
	if strings.TrimSpace(c.Aspect) != "" {
		if err := iqa.CheckAspect(c.Aspect); err != nil {
			rep.Add(path, c.Line, KindParse, "%v", err)
			ok = false
		}
	}
	if strings.TrimSpace(c.RatingWord) != "" {
		if i := iqa.RatingIndex(c.RatingWord); i < 0 {
			rep.Add(path, c.Line, KindParse, "rating word %q not one of %v", c.RatingWord, iqa.RatingWords)
			ok = false
		} else {
			c.RatingWord = iqa.RatingWords[i]
		}
	}
	if c.MOS != nil && !(*c.MOS >= 0 && *c.MOS <= iqa.MaxMOS) {
		rep.Add(path, c.Line, KindRange, "mos %v outside [0, %v]", *c.MOS, iqa.MaxMOS)
		ok = false
	}
	return ok
}

// WriteConversation appends c as one JSON line to w (HTML characters are
// not escaped).
func WriteConversation(w io.Writer, c Conversation) error {
	b, err := MarshalLine(c)
	if err != nil {
		return fmt.Errorf("write conversation %s/%s: %w", c.Image, c.Aspect, err)
	}
	_, err = w.Write(b)
	return err
}

// MarshalLine encodes v as one JSON line without HTML escaping.
func MarshalLine(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// isFinite reports whether v is a number (not NaN or ±Inf).
func isFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
