package train

import (
	"errors"
	"fmt"
	"strings"

	"github.com/m3gate/m3gate/schemas/labels"
	"github.com/m3gate/m3gate/sidecar/m3"
)

// Record is one conversation of the training data (the conversations JSONL
// format of schemas/labels). Its MOS is the line's own "mos" or one joined
// from a labels file with JoinMOS; nil when it has none.
type Record struct {
	labels.Conversation
}

// Prompts returns the record's two questions as m3.Prompts.
func (r Record) Prompts() m3.Prompts {
	return m3.Prompts{Round1: r.Round1, Round2: r.Round2}
}

// ReadConversations reads a conversations JSONL file (the format of
// shared/data/agiqa-3k/conversations.jsonl) with labels.ReadConversations.
// Training takes no partial data: any bad line is an error naming every
// problem's file and line (the first few, and how many more), and so is a
// file without records.
func ReadConversations(path string) ([]Record, error) {
	rep := &labels.Report{}
	convs, err := labels.ReadConversations(path, rep)
	if err != nil {
		return nil, err
	}
	if err := rep.Err(); err != nil {
		return nil, fmt.Errorf("read conversations %s: %w", path, err)
	}
	if len(convs) == 0 {
		return nil, fmt.Errorf("read conversations %s: no records", path)
	}
	out := make([]Record, len(convs))
	for i, c := range convs {
		out[i] = Record{Conversation: c}
	}
	return out, nil
}

func clipList(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, "; ")
	}
	return strings.Join(s[:n], "; ") + fmt.Sprintf("; and %d more", len(s)-n)
}

// Select keeps the records of aspect (all when empty) and split (all when
// empty), in file order, at most limit of them (all when limit <= 0).
func Select(recs []Record, aspect, split string, limit int) []Record {
	var out []Record
	for _, r := range recs {
		if aspect != "" && r.Aspect != aspect {
			continue
		}
		if split != "" && r.Split != split {
			continue
		}
		out = append(out, r)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out
}

// ReadMOS reads MOS labels with labels.ReadMOS: an AGIQA-3K data.csv (name
// and mos_quality, mos_align, ... columns) or an m3gate manifest JSONL. Any
// bad line is an error naming its file and line, and so is a file without
// labels.
func ReadMOS(path string) (labels.MOSTable, error) {
	rep := &labels.Report{}
	t, err := labels.ReadMOS(path, rep)
	if err != nil {
		return nil, err
	}
	if err := rep.Err(); err != nil {
		return nil, fmt.Errorf("read labels %s: %w", path, err)
	}
	if len(t) == 0 {
		return nil, fmt.Errorf("read labels %s: no records", path)
	}
	return t, nil
}

// JoinMOS sets MOS on every record from t; a record without a label is an
// error naming it.
func JoinMOS(recs []Record, t labels.MOSTable) error {
	var missing []string
	for i := range recs {
		r := &recs[i]
		v, ok := t.Lookup(r.Image, r.Aspect)
		if !ok {
			if r.MOS == nil {
				missing = append(missing, fmt.Sprintf("line %d (%s, %s)", r.Line, r.Image, r.Aspect))
			}
			continue
		}
		r.MOS = &v
	}
	if len(missing) > 0 {
		return fmt.Errorf("no MOS label for %d records: %s", len(missing), clipList(missing, 5))
	}
	return nil
}

// errNoMOS is returned when a record that needs a MOS has none.
var errNoMOS = errors.New("record has no MOS (pass --labels)")
