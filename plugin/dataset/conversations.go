package dataset

import (
	"github.com/m3gate/m3gate/schemas/labels"
)

// readConversationRecords merges conversations into one manifest record per
// image, carrying the rating words per aspect.
func readConversationRecords(path string, rep *labels.Report) ([]Record, error) {
	convs, err := labels.ReadConversations(path, rep)
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
			rep.Add(path, c.Line, labels.KindParse, "image %q: prompt or split differs from %s", c.Image, recs[i].Origin)
			continue
		}
		recs[i].RatingWords[c.Aspect] = c.RatingWord
	}
	return recs, nil
}
