// Package review is the review page of m3gate: the embedded HTML, CSS and
// JavaScript that `m3gate serve` shows at / (a live feed of scored images
// with what-if thresholds), and the same view written as one
// self-contained file by `m3gate report`. It also provides the thumbnails
// both show (Thumbnail) and reads the result files a report is made from
// (Load).
package review

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"strings"
	"time"
)

// Item is one reviewed image: its scores and what is known about how it
// was made. The page and the report show one card per Item.
type Item struct {
	// ID identifies the item within its view.
	ID string `json:"id"`
	// Time is when the image was scored, when known.
	Time time.Time `json:"time,omitzero"`
	// Name is the image's file name or label, when it has one.
	Name string `json:"name,omitempty"`
	// Prompt is the generation prompt.
	Prompt string `json:"prompt"`
	// Seed is the sampler seed in decimal ("" when unknown): a string, since
	// a 64-bit seed does not fit a JavaScript number.
	Seed string `json:"seed,omitempty"`
	// Attempt is the generation attempt (1 for the first), 0 when unknown.
	Attempt int `json:"attempt,omitempty"`
	// Thumb is the thumbnail: a URL on the daemon or a data: URL.
	Thumb string `json:"thumb,omitempty"`
	// Error is why the image could not be scored.
	Error string `json:"error,omitempty"`
	// Aspects are the scores by aspect.
	Aspects map[string]Aspect `json:"aspects,omitempty"`
	// Recorded is the verdict m3gate run logged ("passed" or "rejected"),
	// "" when none was logged.
	Recorded string `json:"recorded,omitempty"`
}

// Aspect is an image's score on one aspect.
type Aspect struct {
	MOS         float64            `json:"mos"`
	Rating      string             `json:"rating,omitempty"`
	WordProbs   map[string]float64 `json:"word_probs,omitempty"`
	Description string             `json:"description,omitempty"`
	Source      string             `json:"source,omitempty"`
}

// Gate is the configured gate the page starts its what-if sliders from.
type Gate struct {
	// Thresholds are the lowest passing MOS per aspect.
	Thresholds map[string]float64 `json:"thresholds"`
	// Mode is "all" or "any".
	Mode string `json:"mode"`
}

// View is what a report shows: the gate and the items.
type View struct {
	// Title heads the page.
	Title string `json:"title"`
	// Source names where the items came from (a file or folder).
	Source string `json:"source,omitempty"`
	// Generated is when the report was written.
	Generated time.Time `json:"generated,omitzero"`
	// Gate is the starting point of the what-if sliders.
	Gate Gate `json:"gate"`
	// Items are the images, in the order they were scored.
	Items []Item `json:"items"`
}

//go:embed assets
var assets embed.FS

// Assets returns the page's files: index.html, app.js and style.css.
func Assets() fs.FS {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree always has assets/
	}
	return sub
}

// Asset returns the content of one embedded file.
func Asset(name string) ([]byte, error) { return fs.ReadFile(Assets(), name) }

// reportCSP is the report's Content-Security-Policy: nothing may be loaded
// from anywhere; only the inline script and style, and data: images, run.
const reportCSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

// WriteReport writes v as one self-contained HTML file: the page's CSS
// and JavaScript inline, the data as a JSON script element, thumbnails as
// data: URLs. Opening it makes no request.
func WriteReport(w io.Writer, v View) error {
	css, err := Asset("style.css")
	if err != nil {
		return err
	}
	js, err := Asset("app.js")
	if err != nil {
		return err
	}
	if v.Items == nil {
		v.Items = []Item{}
	}
	// json.Marshal escapes <, > and & as \u003c…, so the data cannot close
	// its script element.
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("report: encode data: %w", err)
	}
	if bytes.Contains(js, []byte("</script")) || bytes.Contains(css, []byte("</style")) {
		return fmt.Errorf("report: an asset contains a closing tag")
	}
	var buf bytes.Buffer
	err = reportTemplate.Execute(&buf, map[string]any{
		"CSP":   reportCSP,
		"Title": v.Title,
		"CSS":   template.CSS(css),
		"JS":    template.JS(js),
		"Data":  template.JS(data),
	})
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// reportTemplate is the report file; html/template escapes the title, and
// the assets and data are inserted as they are (checked above).
var reportTemplate = template.Must(template.New("report").Parse(strings.TrimSpace(`
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{.CSP}}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{.Title}}</title>
<link rel="icon" href="data:,">
<style>{{.CSS}}</style>
</head>
<body data-mode="report">
<script type="application/json" id="m3gate-data">{{.Data}}</script>
<script>{{.JS}}</script>
</body>
</html>
`) + "\n"))
