package schemas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestConversionRoundTrip(t *testing.T) {
	load := LoadRequest{
		ModelDir: "/m", Family: "idefics3", Adapters: map[string]string{"quality": "/a/q"},
		Predictors: map[string]string{"quality": "/p/q.safetensors"}, Device: "cpu", DType: "f32", Threads: 2,
		Options: map[string]string{"image_size": "512"},
	}
	if got := loadRequestFromProto(loadRequestToProto(load)); !reflect.DeepEqual(got, load) {
		t.Errorf("load round trip: got %+v, want %+v", got, load)
	}
	st := Status{
		State: StateLoading, Progress: LoadProgress{Stage: "weights", DoneBytes: 10, TotalBytes: 20, Message: "m"},
		Memory: Memory{RSSBytes: 1, GPUBytes: 2, GPUTotalBytes: 3},
		Model:  ModelInfo{Family: "idefics3", AdapterAspects: []string{"quality"}, Parameters: 7, Details: map[string]string{"k": "v"}},
		Error:  "e", QueueDepth: 4,
	}
	if got := statusFromProto(statusToProto(st)); !reflect.DeepEqual(got, st) {
		t.Errorf("status round trip: got %+v, want %+v", got, st)
	}
	req := ScoreRequest{
		Items:  []ScoreItem{{Data: []byte{1, 2, 3}, Prompt: "a cat"}, {Path: "/x/y.png"}},
		Prompt: "default",
		Options: ScoreOptions{Aspects: []string{"quality", "correspondence"}, MaxNewTokens: 64,
			Prompts: map[string]AspectPrompt{"quality": {Round1: "r1 {prompt}", Round2: "r2"}}, Extra: map[string]string{"x": "y"}},
	}
	p, err := scoreRequestToProto(req)
	if err != nil {
		t.Fatal(err)
	}
	if got := scoreRequestFromProto(p); !reflect.DeepEqual(got, req) {
		t.Errorf("score request round trip: got %+v, want %+v", got, req)
	}
	rs := []ItemResult{
		{Index: 0, Aspects: map[string]AspectResult{"quality": {MOS: 3.25, Rating: "good", WordProbs: map[string]float64{"good": 0.5, "bad": 0.1},
			Description: "d", Source: SourcePredictor, Timings: map[string]time.Duration{"generate": 3 * time.Millisecond}}}},
		{Index: 1, Error: "decode image 1: bad png"},
	}
	if got := resultsFromProto(resultsToProto(rs)); !reflect.DeepEqual(got, rs) {
		t.Errorf("results round trip: got %+v, want %+v", got, rs)
	}
	for _, s := range []State{StateStarting, StateIdle, StateLoading, StateReady, StateError} {
		if got := stateFromProto(stateToProto(s)); got != s {
			t.Errorf("state %q round trip: got %q", s, got)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := ScoreOptions{Aspects: []string{"quality"}}
	tests := []struct {
		name string
		req  ScoreRequest
		want string // substring of the error; "" = valid
	}{
		{"valid data", ScoreRequest{Items: []ScoreItem{{Data: []byte{1}}}, Options: ok}, ""},
		{"valid path", ScoreRequest{Items: []ScoreItem{{Path: "/a.png"}}, Options: ok}, ""},
		{"no items", ScoreRequest{Options: ok}, "no images"},
		{"both", ScoreRequest{Items: []ScoreItem{{Data: []byte{1}, Path: "/a"}}, Options: ok}, "both data and a path"},
		{"neither", ScoreRequest{Items: []ScoreItem{{}}, Options: ok}, "neither data nor a path"},
		{"relative", ScoreRequest{Items: []ScoreItem{{Path: "a.png"}}, Options: ok}, "not absolute"},
		{"no aspects", ScoreRequest{Items: []ScoreItem{{Data: []byte{1}}}}, "no aspects"},
		{"repeated", ScoreRequest{Items: []ScoreItem{{Data: []byte{1}}}, Options: ScoreOptions{Aspects: []string{"q", "q"}}}, `aspect "q" repeated`},
		{"negative tokens", ScoreRequest{Items: []ScoreItem{{Data: []byte{1}}}, Options: ScoreOptions{Aspects: []string{"q"}, MaxNewTokens: -1}}, "negative"},
	}
	for _, tt := range tests {
		err := tt.req.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: got %v, want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalid)):
			t.Errorf("%s: got %v, want an ErrInvalid containing %q", tt.name, err, tt.want)
		}
	}
}

func TestOptionsKey(t *testing.T) {
	a := ScoreOptions{Aspects: []string{"quality"}, Prompts: map[string]AspectPrompt{"quality": {"1", "2"}, "x": {"3", "4"}}}
	b := ScoreOptions{Aspects: []string{"quality"}, Prompts: map[string]AspectPrompt{"x": {"3", "4"}, "quality": {"1", "2"}}}
	c := ScoreOptions{Aspects: []string{"quality"}, MaxNewTokens: 5}
	if a.Key() != b.Key() {
		t.Errorf("equal options have different keys")
	}
	if a.Key() == c.Key() {
		t.Errorf("different options have the same key")
	}
}

// fakeScorer records what arrives and answers per method.
type fakeScorer struct {
	loadErr  error
	scoreErr error
	got      ScoreRequest
}

func (f *fakeScorer) Load(ctx context.Context, req LoadRequest, progress func(LoadProgress)) error {
	for i := int64(1); i <= 3; i++ {
		progress(LoadProgress{Stage: "weights", DoneBytes: i, TotalBytes: 3})
	}
	if f.loadErr != nil {
		return f.loadErr
	}
	progress(LoadProgress{Stage: StageDone, DoneBytes: 3, TotalBytes: 3})
	return nil
}

func (f *fakeScorer) Status(ctx context.Context) (Status, error) {
	return Status{State: StateReady, Model: ModelInfo{Family: "f"}}, nil
}

func (f *fakeScorer) Score(ctx context.Context, req ScoreRequest) ([]ItemResult, error) {
	f.got = req
	if f.scoreErr != nil {
		return nil, f.scoreErr
	}
	out := make([]ItemResult, len(req.Items))
	for i, it := range req.Items {
		out[i] = ItemResult{Index: i, Aspects: map[string]AspectResult{"quality": {MOS: float64(len(it.Data)) / 1e6, Rating: "good", Source: SourceWordProbs}}}
	}
	return out, nil
}

func (f *fakeScorer) Unload(ctx context.Context) error { return nil }

// dial serves impl on a loopback gRPC server built like the sidecar's and
// returns a client configured like the host's.
func dial(t *testing.T, impl Scorer) Scorer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewGRPCServer(nil)
	RegisterServer(srv, impl)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), append(DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return NewClient(conn)
}

func TestGRPCRoundTrip(t *testing.T) {
	ctx := context.Background()
	f := &fakeScorer{}
	c := dial(t, f)

	var steps []LoadProgress
	if err := c.Load(ctx, LoadRequest{ModelDir: "/m", Family: "f"}, func(p LoadProgress) { steps = append(steps, p) }); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(steps) != 4 || steps[3].Stage != StageDone || steps[1].DoneBytes != 2 {
		t.Errorf("progress: got %+v", steps)
	}

	// 50 MB of image data crosses the gRPC limits in both directions' config.
	big := bytes.Repeat([]byte{0xAB}, 50<<20)
	rs, err := c.Score(ctx, ScoreRequest{Items: []ScoreItem{{Data: big}}, Options: ScoreOptions{Aspects: []string{"quality"}}})
	if err != nil {
		t.Fatalf("Score 50 MB: %v", err)
	}
	if len(f.got.Items) != 1 || !bytes.Equal(f.got.Items[0].Data, big) {
		t.Fatalf("the sidecar side did not receive the 50 MB image intact")
	}
	if got, want := rs[0].Aspects["quality"].MOS, float64(50<<20)/1e6; got != want {
		t.Errorf("result: got mos %v, want %v", got, want)
	}
}

func TestGRPCErrorsKeepIdentity(t *testing.T) {
	ctx := context.Background()
	for _, sentinel := range []error{ErrNoScorer, ErrNotLoaded, ErrInvalid} {
		f := &fakeScorer{loadErr: fmt.Errorf("load idefics3: %w", sentinel), scoreErr: fmt.Errorf("score: %w", sentinel)}
		c := dial(t, f)
		err := c.Load(ctx, LoadRequest{ModelDir: "/m", Family: "f"}, func(LoadProgress) {})
		if !errors.Is(err, sentinel) || err.Error() != "load idefics3: "+sentinel.Error() {
			t.Errorf("Load error: got %v, want %q matching %v", err, "load idefics3: "+sentinel.Error(), sentinel)
		}
		_, err = c.Score(ctx, ScoreRequest{Items: []ScoreItem{{Data: []byte{1}}}, Options: ScoreOptions{Aspects: []string{"q"}}})
		if !errors.Is(err, sentinel) {
			t.Errorf("Score error: got %v, want %v", err, sentinel)
		}
	}
	// An ordinary error keeps its message.
	c := dial(t, &fakeScorer{scoreErr: errors.New("decode image: boom")})
	_, err := c.Score(ctx, ScoreRequest{Items: []ScoreItem{{Data: []byte{1}}}, Options: ScoreOptions{Aspects: []string{"q"}}})
	if err == nil || err.Error() != "decode image: boom" {
		t.Errorf("plain error: got %v", err)
	}
}
