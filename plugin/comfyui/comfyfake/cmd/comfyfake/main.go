// Command comfyfake runs the fake ComfyUI server standalone, for demos of
// `m3gate run` and the node pack without a GPU: images are flat grays whose
// brightness is the sampler seed mod 256 (so a quality gate rejects some
// seeds and passes others).
//
//	comfyfake --listen 127.0.0.1:8188 --step-delay 200ms
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/m3gate/m3gate/plugin/comfyui/comfyfake"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8188", "address to listen on")
	delay := flag.Duration("step-delay", 0, "time each sampler step takes")
	steps := flag.Int("max-steps", 3, "most progress steps a sampler reports")
	probe := flag.Bool("probe", false, "add the QualityProbe node of the recorded transcripts")
	flag.Parse()
	opts := []comfyfake.Option{comfyfake.WithAddr(*listen), comfyfake.WithStepDelay(*delay), comfyfake.WithMaxSteps(*steps)}
	if *probe {
		opts = append(opts, comfyfake.WithQualityProbe())
	}
	s := comfyfake.New(opts...)
	if err := s.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "comfyfake:", err)
		os.Exit(1)
	}
	fmt.Println("fake ComfyUI listening on", s.URL())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	s.Close()
}
