package train

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// TestDeviceCUDAOnCPUOnlyBuild: --device cuda on this CPU-only libtorch
// fails with the rebuild message.
func TestDeviceCUDAOnCPUOnlyBuild(t *testing.T) {
	if torch.CUDABuild() {
		t.Skip("this is a CUDA build of libtorch")
	}
	o := tinyFinetune(t, t.TempDir())
	o.Device = "cuda"
	if _, err := Finetune(context.Background(), o, nil); !errors.Is(err, torch.ErrNoCUDA) {
		t.Errorf("finetune on cuda: %v, want torch.ErrNoCUDA", err)
	}
	p := tinyPredictor(t, t.TempDir())
	p.Device = "cuda:0"
	if _, err := TrainPredictor(context.Background(), p, nil); !errors.Is(err, torch.ErrNoCUDA) {
		t.Errorf("train-predictor on cuda:0: %v, want torch.ErrNoCUDA", err)
	}
}

// TestDeviceCPUExplicitEqualsDefault: --device cpu trains exactly as the
// default: the same losses, bit for bit.
func TestDeviceCPUExplicitEqualsDefault(t *testing.T) {
	skipShort(t)
	var ft [][]float64
	var pr [][]float64
	for _, dev := range []string{"", "cpu"} {
		o := tinyFinetune(t, t.TempDir())
		o.Device, o.Epochs, o.ValSplit = dev, 2, ""
		res, err := Finetune(context.Background(), o, nil)
		if err != nil {
			t.Fatalf("finetune device %q: %v", dev, err)
		}
		ft = append(ft, res.Losses)
		p := tinyPredictor(t, t.TempDir())
		p.Device, p.Epochs, p.ValSplit, p.MaxTrain = dev, 2, "", 4
		pres, err := TrainPredictor(context.Background(), p, nil)
		if err != nil {
			t.Fatalf("train-predictor device %q: %v", dev, err)
		}
		pr = append(pr, pres.TrainLoss)
	}
	if len(ft[0]) == 0 || !slices.Equal(ft[0], ft[1]) {
		t.Errorf("finetune losses: default %v, --device cpu %v", ft[0], ft[1])
	}
	if len(pr[0]) == 0 || !slices.Equal(pr[0], pr[1]) {
		t.Errorf("train-predictor losses: default %v, --device cpu %v", pr[0], pr[1])
	}
}
