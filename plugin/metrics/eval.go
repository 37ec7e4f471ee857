package metrics

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Prediction is one scored image: the predicted score and the ground-truth
// MOS of one aspect.
type Prediction struct {
	Image     string  `json:"image"`
	Aspect    string  `json:"aspect"`
	Predicted float64 `json:"predicted"`
	MOS       float64 `json:"mos"`
	Source    string  `json:"source,omitempty"`
}

// Lookup returns the ground truth of an image and aspect (for prediction
// files without mos), and whether it is known.
type Lookup func(image, aspect string) (mos float64, source string, ok bool)

// ReadPredictions reads a predictions file: JSONL (one Prediction object
// per line) or CSV with a header naming the columns image, aspect,
// predicted, mos and optionally source. The format is chosen by the
// extension (.csv is CSV, anything else JSONL). Every bad line is listed in
// the error with file and line.
func ReadPredictions(path string) ([]Prediction, error) {
	return ReadPredictionsWith(path, nil)
}

// ReadPredictionsWith is ReadPredictions where lines without mos (or with
// an empty mos or source) are completed by lookup, e.g. from a manifest.
func ReadPredictionsWith(path string, lookup Lookup) ([]Prediction, error) {
	return ReadPredictionsColumns(path, lookup, Columns{})
}

// Columns names the columns of a CSV predictions file. An empty field
// means the standard name or one of its common aliases (csvAliases).
type Columns struct {
	Predicted, MOS string
}

// csvAliases are the header names accepted for a column, standard name
// first.
var csvAliases = map[string][]string{
	"image":     {"image", "name", "file", "filename", "path", "image_name"},
	"aspect":    {"aspect"},
	"source":    {"source"},
	"predicted": {"predicted", "pred", "prediction", "score", "predicted_mos", "pred_mos"},
	"mos":       {"mos", "gt", "gt_mos", "mos_gt", "label", "target"},
}

// ReadPredictionsColumns is ReadPredictionsWith with the CSV columns of
// the predicted score and the MOS named by cols.
func ReadPredictionsColumns(path string, lookup Lookup, cols Columns) ([]Prediction, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read predictions: %w", err)
	}
	var preds []Prediction
	var probs []string
	if strings.EqualFold(filepath.Ext(path), ".csv") {
		preds, probs, err = readPredictionsCSV(path, b, lookup, cols)
		if err != nil {
			return nil, err
		}
	} else {
		preds, probs = readPredictionsJSONL(path, b, lookup)
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("read predictions: %d bad lines:\n%s", len(probs), strings.Join(probs, "\n"))
	}
	if len(preds) == 0 {
		return nil, fmt.Errorf("read predictions %s: no predictions", path)
	}
	return preds, nil
}

// complete fills p's MOS (and empty source) from lookup.
func complete(p *Prediction, lookup Lookup) bool {
	if lookup == nil {
		return false
	}
	mos, src, ok := lookup(p.Image, p.Aspect)
	if !ok {
		return false
	}
	p.MOS = mos
	if p.Source == "" {
		p.Source = src
	}
	return true
}

func lookupHint(lookup Lookup) string {
	if lookup != nil {
		return " (and the image/aspect is not in the manifest)"
	}
	return ""
}

func validPrediction(p Prediction) error {
	if p.Image == "" {
		return errors.New("no image")
	}
	if math.IsNaN(p.Predicted) || math.IsInf(p.Predicted, 0) || math.IsNaN(p.MOS) || math.IsInf(p.MOS, 0) {
		return fmt.Errorf("predicted %v, mos %v not finite", p.Predicted, p.MOS)
	}
	return nil
}

func readPredictionsJSONL(path string, b []byte, lookup Lookup) ([]Prediction, []string) {
	var preds []Prediction
	var probs []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	line := 0
	for sc.Scan() {
		line++
		l := bytes.TrimSpace(sc.Bytes())
		if len(l) == 0 {
			continue
		}
		var raw struct {
			Prediction
			Predicted *float64 `json:"predicted"`
			MOS       *float64 `json:"mos"`
			// Aspects and Error are the shape of `m3gate score --json`
			// lines: one image, its scores per aspect (the predictions).
			Aspects map[string]struct {
				MOS *float64 `json:"mos"`
			} `json:"aspects"`
			Error string `json:"error"`
		}
		if err := json.Unmarshal(l, &raw); err != nil {
			probs = append(probs, fmt.Sprintf("%s:%d: %v", path, line, err))
			continue
		}
		if raw.Error != "" {
			probs = append(probs, fmt.Sprintf("%s:%d: %s was not scored: %s", path, line, raw.Image, raw.Error))
			continue
		}
		if raw.Aspects != nil {
			ps, pr := expandScoreLine(raw.Image, raw.Aspects, lookup)
			for _, msg := range pr {
				probs = append(probs, fmt.Sprintf("%s:%d: %s", path, line, msg))
			}
			preds = append(preds, ps...)
			continue
		}
		p := raw.Prediction
		if raw.Predicted == nil || (raw.MOS == nil && !complete(&p, lookup)) {
			probs = append(probs, fmt.Sprintf("%s:%d: needs predicted and mos%s", path, line, lookupHint(lookup)))
			continue
		}
		p.Predicted = *raw.Predicted
		if raw.MOS != nil {
			p.MOS = *raw.MOS
			complete(&p, nil)
		}
		if p.Source == "" && lookup != nil {
			if _, src, ok := lookup(p.Image, p.Aspect); ok {
				p.Source = src
			}
		}
		if err := validPrediction(p); err != nil {
			probs = append(probs, fmt.Sprintf("%s:%d: %v", path, line, err))
			continue
		}
		preds = append(preds, p)
	}
	return preds, probs
}

// expandScoreLine turns one `m3gate score --json` line into a prediction
// per aspect; the true MOS and the source come from the manifest lookup.
func expandScoreLine(image string, aspects map[string]struct {
	MOS *float64 `json:"mos"`
}, lookup Lookup) ([]Prediction, []string) {
	if lookup == nil {
		return nil, []string{"a line of `m3gate score --json` output needs --manifest for the true MOS"}
	}
	names := make([]string, 0, len(aspects))
	for a := range aspects {
		names = append(names, a)
	}
	sort.Strings(names)
	var preds []Prediction
	var probs []string
	for _, a := range names {
		m := aspects[a].MOS
		if m == nil {
			probs = append(probs, fmt.Sprintf("%s: aspect %s has no mos", image, a))
			continue
		}
		p := Prediction{Image: image, Aspect: a, Predicted: *m}
		if !complete(&p, lookup) {
			// An aspect the manifest has no MOS for is not evaluated.
			continue
		}
		if err := validPrediction(p); err != nil {
			probs = append(probs, err.Error())
			continue
		}
		preds = append(preds, p)
	}
	return preds, probs
}

func readPredictionsCSV(path string, b []byte, lookup Lookup, cols Columns) ([]Prediction, []string, error) {
	r := csv.NewReader(bytes.NewReader(b))
	r.FieldsPerRecord = -1
	hdr, err := r.Read()
	if err != nil {
		return nil, nil, fmt.Errorf("read predictions %s: header: %w", path, err)
	}
	found := map[string]int{}
	var names []string
	for i, h := range hdr {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		if _, dup := found[h]; !dup {
			found[h] = i
		}
		names = append(names, h)
	}
	given := map[string]string{"predicted": cols.Predicted, "mos": cols.MOS}
	flags := map[string]string{"predicted": "--pred-col", "mos": "--mos-col"}
	col := map[string]int{}
	for _, c := range []string{"image", "aspect", "source", "predicted", "mos"} {
		want := csvAliases[c]
		if g := strings.ToLower(strings.TrimSpace(given[c])); g != "" {
			want = []string{g}
		}
		for _, name := range want {
			if i, ok := found[name]; ok {
				col[c] = i
				break
			}
		}
	}
	required := []string{"image", "predicted", "mos"}
	if lookup != nil {
		required = required[:2]
	}
	for _, c := range required {
		if _, ok := col[c]; ok {
			continue
		}
		hint := "looked for " + strings.Join(csvAliases[c], ", ")
		if g := given[c]; g != "" {
			hint = "looked for " + g
		}
		if f := flags[c]; f != "" {
			hint += "; name it with " + f + " NAME"
		}
		return nil, nil, fmt.Errorf("read predictions %s: no %s column (%s); the header has: %s", path, c, hint, strings.Join(names, ", "))
	}
	get := func(row []string, name string) string {
		i, ok := col[name]
		if !ok || i >= len(row) {
			return ""
		}
		return strings.TrimSpace(row[i])
	}
	var preds []Prediction
	var probs []string
	for {
		row, err := r.Read()
		if err == io.EOF {
			break
		}
		line, _ := r.FieldPos(0)
		if err != nil {
			probs = append(probs, fmt.Sprintf("%s: %v", path, err))
			var pe *csv.ParseError
			if !errors.As(err, &pe) {
				break
			}
			continue
		}
		p := Prediction{Image: get(row, "image"), Aspect: get(row, "aspect"), Source: get(row, "source")}
		var e1, e2 error
		p.Predicted, e1 = strconv.ParseFloat(get(row, "predicted"), 64)
		if ms := get(row, "mos"); ms != "" || lookup == nil {
			p.MOS, e2 = strconv.ParseFloat(ms, 64)
		} else if !complete(&p, lookup) {
			e2 = fmt.Errorf("no mos%s", lookupHint(lookup))
		}
		if p.Source == "" && lookup != nil {
			if _, src, ok := lookup(p.Image, p.Aspect); ok {
				p.Source = src
			}
		}
		if err := errors.Join(e1, e2); err != nil {
			probs = append(probs, fmt.Sprintf("%s:%d: %v", path, line, err))
			continue
		}
		if err := validPrediction(p); err != nil {
			probs = append(probs, fmt.Sprintf("%s:%d: %v", path, line, err))
			continue
		}
		preds = append(preds, p)
	}
	return preds, probs, nil
}

// Result holds the metrics of one aspect.
type Result struct {
	Aspect     string              `json:"aspect"`
	N          int                 `json:"n"`
	SRCC       float64             `json:"srcc"`
	PLCC       float64             `json:"plcc"`
	PLCCFitted float64             `json:"plcc_fitted"`
	KRCC       float64             `json:"krcc"`
	RMSE       float64             `json:"rmse"`
	RMSEFitted float64             `json:"rmse_fitted"`
	Logistic   Logistic            `json:"logistic"`
	CI         map[string]Interval `json:"ci,omitempty"`
	// FitError says why the logistic fit failed (PLCCFitted is then NaN and
	// written as null).
	FitError string `json:"fit_error,omitempty"`
}

// MarshalJSON writes NaN metrics as null.
func (r Result) MarshalJSON() ([]byte, error) {
	type plain Result
	type out struct {
		plain
		PLCCFitted *float64 `json:"plcc_fitted"`
		RMSEFitted *float64 `json:"rmse_fitted"`
	}
	o := out{plain: plain(r)}
	if !math.IsNaN(r.PLCCFitted) {
		o.PLCCFitted = &r.PLCCFitted
	}
	if !math.IsNaN(r.RMSEFitted) {
		o.RMSEFitted = &r.RMSEFitted
	}
	return json.Marshal(o)
}

// EvalReport is the outcome of Evaluate.
type EvalReport struct {
	Results   []Result `json:"results"`
	Bootstrap int      `json:"bootstrap"`
	Seed      uint64   `json:"seed"`
	Level     float64  `json:"level"`
}

// EvalOptions configure Evaluate.
type EvalOptions struct {
	// Bootstrap is the number of bootstrap resamples; 0 skips the
	// confidence intervals.
	Bootstrap int
	Seed      uint64
	// Level is the confidence level (default 0.95).
	Level float64
}

// Aspects returns the aspects present in preds, sorted.
func Aspects(preds []Prediction) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range preds {
		if !seen[p.Aspect] {
			seen[p.Aspect] = true
			out = append(out, p.Aspect)
		}
	}
	sort.Strings(out)
	return out
}

// ByAspect returns the predictions of one aspect.
func ByAspect(preds []Prediction, aspect string) []Prediction {
	var out []Prediction
	for _, p := range preds {
		if p.Aspect == aspect {
			out = append(out, p)
		}
	}
	return out
}

func vectors(preds []Prediction) (x, y []float64) {
	for _, p := range preds {
		x = append(x, p.Predicted)
		y = append(y, p.MOS)
	}
	return x, y
}

// Evaluate computes the metrics of every aspect in preds.
func Evaluate(preds []Prediction, opts EvalOptions) (*EvalReport, error) {
	if opts.Level <= 0 || opts.Level >= 1 {
		opts.Level = 0.95
	}
	rep := &EvalReport{Bootstrap: opts.Bootstrap, Seed: opts.Seed, Level: opts.Level}
	for _, a := range Aspects(preds) {
		res, err := evaluateAspect(a, ByAspect(preds, a), opts)
		if err != nil {
			return nil, fmt.Errorf("evaluate %s: %w", a, err)
		}
		rep.Results = append(rep.Results, res)
	}
	if len(rep.Results) == 0 {
		return nil, errors.New("evaluate: no predictions")
	}
	return rep, nil
}

func evaluateAspect(aspect string, preds []Prediction, opts EvalOptions) (Result, error) {
	x, y := vectors(preds)
	res := Result{Aspect: aspect, N: len(x)}
	var err error
	if res.SRCC, err = iqa.SRCC(x, y); err != nil {
		return res, err
	}
	if res.PLCC, err = iqa.PLCC(x, y); err != nil {
		return res, err
	}
	if res.KRCC, err = iqa.KRCC(x, y); err != nil {
		return res, err
	}
	if res.RMSE, err = iqa.RMSE(x, y); err != nil {
		return res, err
	}
	fitted, b, ferr := FittedPLCC(x, y)
	res.PLCCFitted, res.Logistic = fitted, b
	res.RMSEFitted = math.NaN()
	if ferr != nil {
		res.FitError = ferr.Error()
	} else {
		res.RMSEFitted, _ = iqa.RMSE(b.ApplyAll(x), y)
	}
	if opts.Bootstrap > 0 {
		bo := BootstrapOptions{N: opts.Bootstrap, Seed: opts.Seed, Level: opts.Level}
		res.CI = map[string]Interval{}
		ms := []struct {
			name string
			fn   Metric
		}{{"srcc", iqa.SRCC}, {"plcc", iqa.PLCC}, {"krcc", iqa.KRCC}, {"rmse", iqa.RMSE}}
		if ferr == nil {
			ms = append(ms, struct {
				name string
				fn   Metric
			}{"plcc_fitted", func(x, y []float64) (float64, error) {
				// Start each resample's fit at the full-data optimum.
				return iqa.PLCC(fitFrom(x, y, b, bootstrapIter).ApplyAll(x), y)
			}})
		}
		for _, m := range ms {
			ci, err := Bootstrap(x, y, m.fn, bo)
			if err != nil {
				return res, fmt.Errorf("%s: %w", m.name, err)
			}
			res.CI[m.name] = ci
		}
	}
	return res, nil
}

// WriteJSON writes the report as indented JSON.
func (r *EvalReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Result returns the result of an aspect.
func (r *EvalReport) Result(aspect string) (Result, bool) {
	for _, res := range r.Results {
		if res.Aspect == aspect {
			return res, true
		}
	}
	return Result{}, false
}

// WritePredictionsCSV writes one row per prediction: image, aspect, source,
// predicted, mos, and the prediction mapped by the aspect's fitted logistic.
func (r *EvalReport) WritePredictionsCSV(w io.Writer, preds []Prediction) error {
	cw := csv.NewWriter(w)
	if err := cw.Write([]string{"image", "aspect", "source", "predicted", "mos", "predicted_fitted"}); err != nil {
		return err
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	for _, p := range preds {
		fitted := ""
		if res, ok := r.Result(p.Aspect); ok && res.FitError == "" {
			fitted = f(res.Logistic.Apply(p.Predicted))
		}
		if err := cw.Write([]string{p.Image, p.Aspect, p.Source, f(p.Predicted), f(p.MOS), fitted}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// WriteOutputs writes report.json, predictions.csv and one
// scatter_<aspect>.png per aspect into dir and returns the paths written.
func (r *EvalReport) WriteOutputs(dir string, preds []Prediction) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("write eval outputs: %w", err)
	}
	var files []string
	write := func(name string, fn func(io.Writer) error) error {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		if err := fn(f); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", name, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		files = append(files, p)
		return nil
	}
	if err := write("report.json", r.WriteJSON); err != nil {
		return files, err
	}
	if err := write("predictions.csv", func(w io.Writer) error { return r.WritePredictionsCSV(w, preds) }); err != nil {
		return files, err
	}
	for _, res := range r.Results {
		name := "scatter_" + safeName(res.Aspect) + ".png"
		sub := ByAspect(preds, res.Aspect)
		res := res
		if err := write(name, func(w io.Writer) error { return Scatter(w, sub, &res) }); err != nil {
			return files, err
		}
	}
	return files, nil
}

func safeName(s string) string {
	if s == "" {
		return "all"
	}
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}
