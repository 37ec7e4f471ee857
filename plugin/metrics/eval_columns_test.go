package metrics

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadPredictionsCSVColumns: common column names are accepted, other
// names are given with Columns, CRLF line ends read like LF, and a missing
// column names what was looked for and what the header has.
func TestReadPredictionsCSVColumns(t *testing.T) {
	tests := []struct {
		name    string
		csv     string
		cols    Columns
		want    string // error substring; "" = three predictions
		wantMOS float64
	}{
		{"standard", "image,aspect,predicted,mos\na,quality,1,2\nb,quality,2,3\nc,quality,3,4\n", Columns{}, "", 2},
		{"aliases", "image,aspect,pred,gt\na,quality,1,2\nb,quality,2,3\nc,quality,3,4\n", Columns{}, "", 2},
		{"CRLF", "image,aspect,pred,mos\r\na,quality,1,2.5\r\nb,quality,2,3\r\nc,quality,3,4\r\n", Columns{}, "", 2.5},
		{"named columns", "file,aspect,yhat,truth\na,quality,1,1.5\nb,quality,2,3\nc,quality,3,4\n", Columns{Predicted: "yhat", MOS: "Truth"}, "", 1.5},
		{"named column missing", "image,aspect,pred,mos\na,quality,1,2\n", Columns{Predicted: "yhat"}, "no predicted column (looked for yhat; name it with --pred-col NAME); the header has: image, aspect, pred, mos", 0},
		{"unknown names", "image,aspect,p,m\na,quality,1,2\n", Columns{}, "no predicted column (looked for predicted, pred, prediction, score, predicted_mos, pred_mos; name it with --pred-col NAME); the header has: image, aspect, p, m", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "p.csv")
			if err := os.WriteFile(p, []byte(tt.csv), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := ReadPredictionsColumns(p, nil, tt.cols)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("err = %v, want %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 || got[0].Image != "a" || got[0].Predicted != 1 || got[0].MOS != tt.wantMOS || got[2].MOS != 4 {
				t.Errorf("got %+v", got)
			}
		})
	}
}
