package bench

import (
	"bufio"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// The chart: one column of panels per job, throughput above and CPU time
// per GiB below, one bar per mode, each panel on its own scale (4 KiB
// QD1 and 1 MiB reads differ by two orders of magnitude).
const (
	chartPanelW = 330
	chartPanelH = 250
	chartLeft   = 60 // room for the y labels of the first panel
	chartTop    = 84 // title and legend
	chartGapX   = 50
	chartGapY   = 50
	chartBottom = 34
)

// modeStyle is how a mode's bars look: a full colour (the host's part) and
// a light one (the NIC's part), and the label under the bar.
type modeStyle struct {
	full, light color.RGBA
	short       string
}

var modeStyles = map[string]modeStyle{
	"software":       {rgb(70, 130, 180), rgb(170, 205, 230), "sw"},
	"offload":        {rgb(235, 125, 25), rgb(250, 200, 145), "off"},
	"software-ddgst": {rgb(25, 55, 115), rgb(125, 150, 205), "sw+dd"},
	"offload-plain":  {rgb(245, 190, 40), rgb(250, 225, 150), "plain"},
	"offload-ddgst":  {rgb(165, 65, 0), rgb(225, 160, 110), "off+dd"},
	"skip-ddgst":     {rgb(120, 120, 120), rgb(200, 200, 200), "skip"},
	"null":           {rgb(60, 160, 60), rgb(160, 215, 160), "null"},
}

func rgb(r, g, b uint8) color.RGBA { return color.RGBA{r, g, b, 255} }

var (
	colBlack = rgb(0, 0, 0)
	colGrid  = rgb(225, 225, 225)
	colAxis  = rgb(90, 90, 90)
)

// WriteChart draws the report's chart as a PNG at path.
func (rep *Report) WriteChart(path string) error {
	img := rep.chart()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := png.Encoder{CompressionLevel: png.BestCompression}
	if err := enc.Encode(w, img); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (rep *Report) chart() *image.RGBA {
	var jobs, modes []string
	seenJ, seenM := map[string]bool{}, map[string]bool{}
	for _, r := range rep.Runs {
		if !seenJ[r.Job] {
			seenJ[r.Job] = true
			jobs = append(jobs, r.Job)
		}
		if !seenM[r.Mode] {
			seenM[r.Mode] = true
			modes = append(modes, r.Mode)
		}
	}
	n := max(len(jobs), 1)
	wd := chartLeft + n*chartPanelW + (n-1)*chartGapX + 20
	ht := chartTop + 2*chartPanelH + chartGapY + chartBottom + 16
	img := image.NewRGBA(image.Rect(0, 0, wd, ht))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)

	title := "nvmefs bench: fio through the mount vs a null FUSE file system"
	if rep.Machine.CPUs > 0 {
		title += fmt.Sprintf(" (%d CPUs, %s, %s)", rep.Machine.CPUs, rep.Machine.CPUModel, rep.Started.Format("2006-01-02"))
	}
	text(img, 10, 18, title, colBlack)
	// Legend, wrapped to the width.
	x, y := 10, 30
	for _, m := range modes {
		st := modeStyles[m]
		label := st.short + " = " + modeTitle(m)
		if w := 18 + textWidth(label) + 18; x+w > wd-10 {
			x, y = 10, y+18
		}
		fill(img, image.Rect(x, y, x+14, y+12), st.full)
		text(img, x+18, y+11, label, colBlack)
		x += 18 + textWidth(label) + 18
	}
	note := "CPU per GiB: full colour the host's part, light the NIC's"
	if x+textWidth(note) > wd-10 {
		x, y = 10, y+18
	}
	text(img, x, y+11, note, colAxis)

	for i, job := range jobs {
		px := chartLeft + i*(chartPanelW+chartGapX)
		var tp, cpu []bar
		for _, m := range modes {
			r := rep.find(job, m)
			if r == nil {
				continue
			}
			st := modeStyles[m]
			tp = append(tp, bar{label: st.short, parts: []float64{r.MiBps}, colors: []color.RGBA{st.full}})
			parts, cols := []float64{r.HostCPUPerGiB}, []color.RGBA{st.full}
			if r.NICAccounted && r.NICCPUPerGiB > 0 {
				parts, cols = append(parts, r.NICCPUPerGiB), append(cols, st.light)
			}
			cpu = append(cpu, bar{label: st.short, parts: parts, colors: cols})
		}
		panel(img, image.Rect(px, chartTop, px+chartPanelW, chartTop+chartPanelH), jobTitle(job)+": MiB/s", tp)
		y := chartTop + chartPanelH + chartGapY
		panel(img, image.Rect(px, y, px+chartPanelW, y+chartPanelH), jobTitle(job)+": CPU ms per GiB", cpu)
	}
	return img
}

// bar is one bar: stacked parts from the bottom.
type bar struct {
	label  string
	parts  []float64
	colors []color.RGBA
}

func (b bar) total() float64 {
	t := 0.0
	for _, p := range b.parts {
		t += p
	}
	return t
}

// panel draws a titled bar chart in r (the plot area; labels go around
// it).
func panel(img *image.RGBA, r image.Rectangle, title string, bars []bar) {
	text(img, r.Min.X, r.Min.Y-8, title, colBlack)
	top := 0.0
	for _, b := range bars {
		top = math.Max(top, b.total())
	}
	step := niceStep(top / 4)
	top = math.Max(step*math.Ceil(top*1.12/step), step)
	yOf := func(v float64) int { return r.Max.Y - int(math.Round(v/top*float64(r.Dy()))) }
	for v := 0.0; v <= top+step/2; v += step {
		y := yOf(v)
		fill(img, image.Rect(r.Min.X, y, r.Max.X, y+1), colGrid)
		l := compact(v)
		text(img, r.Min.X-6-textWidth(l), y+4, l, colAxis)
	}
	fill(img, image.Rect(r.Min.X, r.Min.Y, r.Min.X+1, r.Max.Y), colAxis)
	fill(img, image.Rect(r.Min.X, r.Max.Y, r.Max.X, r.Max.Y+1), colAxis)
	if len(bars) == 0 {
		return
	}
	slot := r.Dx() / len(bars)
	bw := slot * 2 / 3
	for i, b := range bars {
		x0 := r.Min.X + i*slot + (slot-bw)/2
		base := 0.0
		for k, p := range b.parts {
			fill(img, image.Rect(x0, yOf(base+p), x0+bw, yOf(base)), b.colors[k])
			base += p
		}
		v := compact(b.total())
		text(img, x0+bw/2-textWidth(v)/2, yOf(base)-4, v, colBlack)
		text(img, x0+bw/2-textWidth(b.label)/2, r.Max.Y+16, b.label, colBlack)
	}
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if x <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// compact writes v in at most about five characters.
func compact(v float64) string {
	switch {
	case v >= 100000:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 10000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v), ".0")
	case v == 0:
		return "0"
	}
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

func text(img *image.RGBA, x, y int, s string, c color.RGBA) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func textWidth(s string) int {
	return font.MeasureString(basicfont.Face7x13, s).Round()
}
