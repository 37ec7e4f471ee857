package dataset

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Conversation is one record of the conversations JSONL format (one per
// image × aspect), as in the reference's distilled training data.
type Conversation struct {
	Image              string `json:"image"`
	Prompt             string `json:"prompt"`
	Aspect             string `json:"aspect"`
	Split              string `json:"split,omitempty"`
	Round1             string `json:"round1"`
	TeacherDescription string `json:"teacher_description"`
	Round2             string `json:"round2"`
	RatingWord         string `json:"rating_word"`
	StudentDescription string `json:"student_description,omitempty"`
	StudentRatingWord  string `json:"student_rating_word,omitempty"`
}

// ConversationFile is a conversation with the line it was read from.
type ConversationFile struct {
	Conversation
	Line int
}

// ReadConversations reads a conversations JSONL file. Invalid lines
// (unparsable JSON, missing image/aspect/round1/round2/description, unknown
// aspect or rating word, duplicate image × aspect) are reported and left
// out. A half-written last line (no trailing newline, unparsable) is
// reported like any other. The error is non-nil only when the file cannot
// be read.
func ReadConversations(path string, rep *Report) ([]ConversationFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read conversations: %w", err)
	}
	defer f.Close()
	return readConversations(f, path, rep)
}

func readConversations(r io.Reader, path string, rep *Report) ([]ConversationFile, error) {
	var out []ConversationFile
	seen := map[[2]string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		rep.Rows++
		var c Conversation
		if err := json.Unmarshal(b, &c); err != nil {
			rep.add(path, line, KindParse, "%v", err)
			continue
		}
		ok := true
		for _, f := range []struct{ name, v string }{
			{"image", c.Image}, {"aspect", c.Aspect}, {"round1", c.Round1}, {"round2", c.Round2},
			{"teacher_description", c.TeacherDescription}, {"rating_word", c.RatingWord},
		} {
			if f.v == "" {
				rep.add(path, line, KindMissingField, "empty %s", f.name)
				ok = false
			}
		}
		if c.Aspect != "" && !iqa.IsAspect(c.Aspect) {
			rep.add(path, line, KindParse, "unknown aspect %q", c.Aspect)
			ok = false
		}
		if c.RatingWord != "" && iqa.RatingIndex(c.RatingWord) < 0 {
			rep.add(path, line, KindParse, "rating word %q not one of %v", c.RatingWord, iqa.RatingWords)
			ok = false
		}
		if !ok {
			continue
		}
		key := [2]string{c.Image, c.Aspect}
		if prev, dup := seen[key]; dup {
			rep.add(path, line, KindDuplicate, "image %q aspect %s already on line %d", c.Image, c.Aspect, prev)
			continue
		}
		seen[key] = line
		out = append(out, ConversationFile{Conversation: c, Line: line})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read conversations %s: %w", path, err)
	}
	return out, nil
}

// WriteConversation appends one conversation as a JSON line to w.
func WriteConversation(w io.Writer, c Conversation) error {
	b, err := marshalLine(c)
	if err != nil {
		return fmt.Errorf("write conversation %s/%s: %w", c.Image, c.Aspect, err)
	}
	_, err = w.Write(b)
	return err
}

// marshalLine encodes v as one JSON line without HTML escaping.
func marshalLine(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// readConversationRecords merges conversations into one manifest record per
// image, carrying the rating words per aspect.
func readConversationRecords(path string, rep *Report) ([]Record, error) {
	convs, err := ReadConversations(path, rep)
	if err != nil {
		return nil, err
	}
	idx := map[string]int{}
	var recs []Record
	for _, c := range convs {
		i, ok := idx[c.Image]
		if !ok {
			idx[c.Image] = len(recs)
			recs = append(recs, Record{
				Name:        c.Image,
				Prompt:      c.Prompt,
				Split:       c.Split,
				RatingWords: map[string]string{},
				Origin:      origin(path, c.Line),
			})
			i = len(recs) - 1
		} else if recs[i].Prompt != c.Prompt || recs[i].Split != c.Split {
			rep.add(path, c.Line, KindParse, "image %q: prompt or split differs from %s", c.Image, recs[i].Origin)
			continue
		}
		recs[i].RatingWords[c.Aspect] = c.RatingWord
	}
	return recs, nil
}
