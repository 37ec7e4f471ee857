package metrics

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"sort"
	"strconv"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Plot size in pixels.
const (
	plotW = 800
	plotH = 600
)

// palette is the tab10 colour cycle, one colour per source.
var palette = []color.RGBA{
	{31, 119, 180, 255}, {255, 127, 14, 255}, {44, 160, 44, 255}, {214, 39, 40, 255},
	{148, 103, 189, 255}, {140, 86, 75, 255}, {227, 119, 194, 255}, {127, 127, 127, 255},
	{188, 189, 34, 255}, {23, 190, 207, 255},
}

// Scatter draws predicted score (y axis) against MOS (x axis) as a PNG, one
// colour per source (sources beyond ten share colours), with the fitted
// logistic curve and the metrics in the title when res is not nil.
func Scatter(w io.Writer, preds []Prediction, res *Result) error {
	if len(preds) == 0 {
		return fmt.Errorf("scatter: no predictions")
	}
	img := image.NewRGBA(image.Rect(0, 0, plotW, plotH))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)

	x0, x1 := math.Inf(1), math.Inf(-1)
	y0, y1 := math.Inf(1), math.Inf(-1)
	for _, p := range preds {
		x0, x1 = math.Min(x0, p.MOS), math.Max(x1, p.MOS)
		y0, y1 = math.Min(y0, p.Predicted), math.Max(y1, p.Predicted)
	}
	x0, x1, xstep := niceRange(x0, x1)
	y0, y1, ystep := niceRange(y0, y1)

	// Plot area.
	left, right, top, bottom := 70, plotW-20, 40, plotH-55
	px := func(v float64) int { return left + int(math.Round((v-x0)/(x1-x0)*float64(right-left))) }
	py := func(v float64) int { return bottom - int(math.Round((v-y0)/(y1-y0)*float64(bottom-top))) }
	black := color.RGBA{0, 0, 0, 255}
	grid := color.RGBA{225, 225, 225, 255}

	// Grid, ticks and tick labels.
	for v := x0; v <= x1+xstep/2; v += xstep {
		x := px(v)
		vline(img, x, top, bottom, grid)
		vline(img, x, bottom, bottom+5, black)
		s := tickLabel(v, xstep)
		text(img, x-textWidth(s)/2, bottom+18, s, black)
	}
	for v := y0; v <= y1+ystep/2; v += ystep {
		y := py(v)
		hline(img, left, right, y, grid)
		hline(img, left-5, left, y, black)
		s := tickLabel(v, ystep)
		text(img, left-8-textWidth(s), y+4, s, black)
	}
	hline(img, left, right, bottom, black)
	vline(img, left, top, bottom, black)
	text(img, (left+right)/2-textWidth("MOS")/2, plotH-15, "MOS", black)
	text(img, 8, top-8, "predicted", black)

	// Colours per source, in sorted order.
	var sources []string
	seen := map[string]bool{}
	for _, p := range preds {
		if !seen[p.Source] {
			seen[p.Source] = true
			sources = append(sources, p.Source)
		}
	}
	sort.Strings(sources)
	colour := map[string]color.RGBA{}
	for i, s := range sources {
		colour[s] = palette[i%len(palette)]
	}

	// Fitted logistic: MOS ≈ f(predicted), drawn as the curve (f(p), p).
	if res != nil && res.FitError == "" {
		curve := color.RGBA{60, 60, 60, 255}
		prevX, prevY := 0, 0
		for i := 0; i <= 400; i++ {
			p := y0 + (y1-y0)*float64(i)/400
			m := res.Logistic.Apply(p)
			if m < x0 || m > x1 {
				prevX = -1
				continue
			}
			cx, cy := px(m), py(p)
			if i > 0 && prevX >= 0 {
				line(img, prevX, prevY, cx, cy, curve)
			}
			prevX, prevY = cx, cy
		}
	}

	// Points: 5×5 discs with a darker rim, so overlaps stay readable.
	for _, p := range preds {
		disc(img, px(p.MOS), py(p.Predicted), colour[p.Source])
	}

	// Title.
	title := fmt.Sprintf("n=%d", len(preds))
	if res != nil {
		title = fmt.Sprintf("%s  n=%d  SRCC %.4f  PLCC %.4f  PLCC(fit) %s  KRCC %.4f  RMSE %.3f",
			orAll(res.Aspect), res.N, res.SRCC, res.PLCC, fmtMaybe(res.PLCCFitted), res.KRCC, res.RMSE)
	}
	text(img, left, 18, title, black)

	// Legend, top-left inside the plot.
	if len(sources) > 1 || (len(sources) == 1 && sources[0] != "") {
		lw := 0
		for _, s := range sources {
			lw = max(lw, textWidth(orUnknown(s)))
		}
		lx, ly := left+10, top+8
		box := image.Rect(lx-6, ly-6, lx+lw+28, ly+len(sources)*16+2)
		draw.Draw(img, box, image.NewUniform(color.NRGBA{255, 255, 255, 235}), image.Point{}, draw.Over)
		rect(img, box, color.RGBA{160, 160, 160, 255})
		for i, s := range sources {
			y := ly + i*16
			disc(img, lx+4, y+5, colour[s])
			text(img, lx+14, y+10, orUnknown(s), black)
		}
	}
	if err := png.Encode(w, img); err != nil {
		return fmt.Errorf("scatter: %w", err)
	}
	return nil
}

func orAll(s string) string {
	if s == "" {
		return "all"
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

func fmtMaybe(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return strconv.FormatFloat(v, 'f', 4, 64)
}

// niceRange widens [lo, hi] to multiples of a 1-2-5 step giving about 5–10
// ticks.
func niceRange(lo, hi float64) (float64, float64, float64) {
	if hi-lo < 1e-12 {
		lo, hi = lo-0.5, hi+0.5
	}
	raw := (hi - lo) / 6
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	return math.Floor(lo/step) * step, math.Ceil(hi/step) * step, step
}

func tickLabel(v, step float64) string {
	dec := 0
	if step < 1 {
		dec = int(math.Ceil(-math.Log10(step) - 1e-9))
	}
	if math.Abs(v) < step*1e-9 {
		v = 0
	}
	return strconv.FormatFloat(v, 'f', dec, 64)
}

var face = basicfont.Face7x13

func textWidth(s string) int { return font.MeasureString(face, s).Round() }

func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: face, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func hline(img *image.RGBA, x0, x1, y int, c color.RGBA) {
	for x := x0; x <= x1; x++ {
		img.SetRGBA(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.RGBA) {
	for y := y0; y <= y1; y++ {
		img.SetRGBA(x, y, c)
	}
}

func rect(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	hline(img, r.Min.X, r.Max.X, r.Min.Y, c)
	hline(img, r.Min.X, r.Max.X, r.Max.Y, c)
	vline(img, r.Min.X, r.Min.Y, r.Max.Y, c)
	vline(img, r.Max.X, r.Min.Y, r.Max.Y, c)
}

// line draws a 2-pixel-wide segment (Bresenham).
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for {
		img.SetRGBA(x0, y0, c)
		img.SetRGBA(x0, y0+1, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func disc(img *image.RGBA, cx, cy int, c color.RGBA) {
	rim := color.RGBA{c.R / 2, c.G / 2, c.B / 2, 255}
	for dy := -3; dy <= 3; dy++ {
		for dx := -3; dx <= 3; dx++ {
			d := dx*dx + dy*dy
			switch {
			case d <= 5:
				img.SetRGBA(cx+dx, cy+dy, c)
			case d <= 10:
				img.SetRGBA(cx+dx, cy+dy, rim)
			}
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}
