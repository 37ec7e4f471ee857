package labels

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// MOSTable maps an image's base file name to aspect to MOS on 0–5.
type MOSTable map[string]map[string]float64

// Lookup returns the MOS of image (any path; its base name is the key) on
// aspect.
func (t MOSTable) Lookup(image, aspect string) (float64, bool) {
	v, ok := t[filepath.Base(image)][aspect]
	return v, ok
}

// MOSColumns maps the MOS columns a labels CSV may carry to their aspects
// (mos_align is AGIQA-3K's name for correspondence).
var MOSColumns = map[string]string{
	"mos_quality":        iqa.Quality,
	"mos_align":          iqa.Correspondence,
	"mos_correspondence": iqa.Correspondence,
	"mos_authenticity":   iqa.Authenticity,
}

// ReadMOS reads MOS labels on 0–5 from a headed CSV file (a name column and
// any of MOSColumns, as AGIQA-3K's data.csv) when path ends in .csv, else
// from an m3gate manifest JSONL (image or name, and a "mos" object per
// aspect). Bad lines go to rep and are left out (see the package doc).
func ReadMOS(path string, rep *Report) (MOSTable, error) {
	if strings.HasSuffix(strings.ToLower(path), ".csv") {
		return readMOSCSV(path, rep)
	}
	return readMOSManifest(path, rep)
}

func readMOSCSV(path string, rep *Report) (MOSTable, error) {
	t := MOSTable{}
	err := ReadHeadedCSV(path, rep, []string{"name"}, func(line int, row []string, cols map[string]int) {
		name := filepath.Base(strings.TrimSpace(row[cols["name"]]))
		if name == "." {
			rep.Add(path, line, KindMissingField, "empty name")
			return
		}
		got := map[string]float64{}
		for c, a := range MOSColumns {
			ci, ok := cols[c]
			if !ok || strings.TrimSpace(row[ci]) == "" {
				continue
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(row[ci]), 64)
			if err != nil || !isFinite(v) {
				rep.Add(path, line, KindParse, "%s %q is not a number", c, row[ci])
				return
			}
			if v < 0 || v > iqa.MaxMOS {
				rep.Add(path, line, KindRange, "%s %v outside [0, %v]", c, v, iqa.MaxMOS)
				return
			}
			got[a] = v
		}
		t.add(name, got)
	})
	if err != nil {
		return nil, fmt.Errorf("read labels: %w", err)
	}
	return t, nil
}

func readMOSManifest(path string, rep *Report) (MOSTable, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read labels: %w", err)
	}
	defer f.Close()
	t := MOSTable{}
	err = rep.Lines(f, func(line int, b []byte) {
		var rec struct {
			Image string             `json:"image"`
			Name  string             `json:"name"`
			MOS   map[string]float64 `json:"mos"`
		}
		if err := json.Unmarshal(b, &rec); err != nil {
			rep.Add(path, line, KindParse, "%v", err)
			return
		}
		name := rec.Name
		if name == "" {
			name = rec.Image
		}
		if name == "" {
			rep.Add(path, line, KindMissingField, "no image or name")
			return
		}
		ok := true
		for a, v := range rec.MOS {
			if err := iqa.CheckAspect(a); err != nil {
				rep.Add(path, line, KindParse, "%v", err)
				ok = false
			} else if !(v >= 0 && v <= iqa.MaxMOS) {
				rep.Add(path, line, KindRange, "%s MOS %v outside [0, %v]", a, v, iqa.MaxMOS)
				ok = false
			}
		}
		if ok {
			t.add(filepath.Base(name), rec.MOS)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read labels %s: %w", path, err)
	}
	return t, nil
}

func (t MOSTable) add(name string, mos map[string]float64) {
	if len(mos) == 0 {
		return
	}
	if t[name] == nil {
		t[name] = map[string]float64{}
	}
	for a, v := range mos {
		t[name][a] = v
	}
}
