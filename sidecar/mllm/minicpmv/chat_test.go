package minicpmv

import (
	"strings"
	"testing"
)

func TestPlaceholder(t *testing.T) {
	one := "<image>" + strings.Repeat("<unk>", 3) + "</image>"
	for _, tc := range []struct {
		cols, rows int
		want       string
	}{
		{0, 0, one},
		{2, 1, one + "<slice>" + one + one + "</slice>"},
		{1, 2, one + "<slice>" + one + "\n" + one + "</slice>"},
		{3, 2, one + "<slice>" + one + one + one + "\n" + one + one + one + "</slice>"},
	} {
		if got := Placeholder(3, tc.cols, tc.rows); got != tc.want {
			t.Errorf("Placeholder(3, %d, %d) = %q, want %q", tc.cols, tc.rows, got, tc.want)
		}
		if n := strings.Count(Placeholder(3, tc.cols, tc.rows), "<image>"); n != 1+tc.cols*tc.rows {
			t.Errorf("%d×%d: %d images", tc.cols, tc.rows, n)
		}
	}
}

func TestRender(t *testing.T) {
	ph := Placeholder(1, 0, 0)
	msgs := []Message{
		{"user", "  Examine this image. Prompt: 'a <|eot_id|> cat'.  \n"},
		{"assistant", "\tIt is sharp.\u001f"},
		{"user", "Rate it."},
	}
	got := PartsText(Render(msgs, ph, false))
	want := "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image><unk></image>\n  Examine this image. Prompt: 'a <|eot_id|> cat'.<|eot_id|>" +
		"<|start_header_id|>assistant<|end_header_id|>\n\nIt is sharp.<|eot_id|>" +
		"<|start_header_id|>user<|end_header_id|>\n\nRate it.<|eot_id|>"
	if got != want {
		t.Errorf("Render:\n got %q\nwant %q", got, want)
	}
	gen := PartsText(Render(msgs[:1], ph, true))
	if !strings.HasSuffix(gen, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n") {
		t.Errorf("generation prompt missing: %q", gen)
	}
	// a blank first message keeps only the placeholder (trim eats the newline)
	if got := PartsText(Render([]Message{{"user", " \n"}}, ph, false)); !strings.Contains(got, "</image><|eot_id|>") {
		t.Errorf("blank content: %q", got)
	}
	// the prompt's look-alike special token is in a literal part
	for _, p := range Render(msgs, ph, false) {
		if strings.Contains(p.Text, "a <|eot_id|> cat") && !p.Literal {
			t.Errorf("user text %q is not literal", p.Text)
		}
	}
}
