package tui

import (
	"strings"
)

// blocks are the eighths of a cell, from empty to full.
var blocks = []rune(" ▁▂▃▄▅▆▇█")

// sparkline draws the last width values on one line, scaled to top (a
// full block; the values' own maximum when top is 0): zero is blank, any
// positive value at least ▁. Fewer values than width are right-aligned
// (the newest is always the last cell).
func sparkline(values []float64, width int, top float64) string {
	if width <= 0 {
		return ""
	}
	if len(values) > width {
		values = values[len(values)-width:]
	}
	if top <= 0 {
		top = maxOf(values)
	}
	var b strings.Builder
	b.WriteString(strings.Repeat(" ", width-len(values)))
	for _, v := range values {
		b.WriteRune(blocks[level(v, top, 8)])
	}
	return b.String()
}

// level is v on a scale of 0..steps of top, at least 1 when v > 0.
func level(v, top float64, steps int) int {
	if v <= 0 || top <= 0 {
		return 0
	}
	l := int(v / top * float64(steps))
	return min(max(l, 1), steps)
}

func maxOf(values []float64) float64 {
	top := 0.0
	for _, v := range values {
		top = max(top, v)
	}
	return top
}

// chart draws the last width values as a bar chart height lines tall,
// scaled to their maximum; one string per line, top first.
func chart(values []float64, width, height int) []string {
	lines := make([]string, height)
	if width <= 0 {
		return lines
	}
	if len(values) > width {
		values = values[len(values)-width:]
	}
	top := maxOf(values)
	eighths := make([]int, len(values))
	for i, v := range values {
		eighths[i] = level(v, top, 8*height)
	}
	pad := strings.Repeat(" ", width-len(values))
	for row := range height {
		var b strings.Builder
		b.WriteString(pad)
		floor := (height - 1 - row) * 8
		for _, e := range eighths {
			b.WriteRune(blocks[min(max(e-floor, 0), 8)])
		}
		lines[row] = b.String()
	}
	return lines
}

// cpuValues and runValues take one field of samples.
func cpuValues(s []Sample) []float64 {
	out := make([]float64, len(s))
	for i, v := range s {
		out[i] = float64(v.CPU)
	}
	return out
}

func runValues(s []Sample) []float64 {
	out := make([]float64, len(s))
	for i, v := range s {
		out[i] = float64(v.Runs)
	}
	return out
}
