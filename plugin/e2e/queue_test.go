package e2e

// End-to-end tests of the scale-out (issue 13): a real embedded JetStream
// server with a file store, real `m3gate worker` processes each
// supervising a real m3gate-sidecar on the tiny model, producers of
// package queue in the test process, and `m3gate serve --queue embedded`.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/m3gate/m3gate/plugin/queue"

	"github.com/m3gate/m3gate/schemas/api"
)

// queueSettings are short timings so redeliveries happen within a test.
func queueSettings() queue.Settings {
	return queue.Settings{AckWait: 3 * time.Second, NakDelay: 200 * time.Millisecond, MaxDeliver: 4}
}

// writeWorkerConfig writes dir/config.yaml for workers and `m3gate score`:
// the tiny model, quality only, 2-token descriptions, batches of batch,
// the queue at url with the timings of queueSettings.
func writeWorkerConfig(t *testing.T, dir, url string, batch int, extra string) {
	t.Helper()
	_, sidecar, model := binaries(t)
	s := queueSettings()
	cfg := fmt.Sprintf(`model:
  dir: %q
  max_new_tokens: 2
scoring:
  aspects: [quality]
  thresholds:
    quality: 2.5
  batch_size: %d
sidecar:
  path: %q
log:
  level: warn
queue:
  url: %q
  ack_wait: %s
  nak_delay: %s
  max_deliver: %d
%s`, model, batch, sidecar, url, s.AckWait, s.NakDelay, s.MaxDeliver, extra)
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// worker is a running `m3gate worker`.
type worker struct {
	*proc
	name string
}

// startWorker runs `m3gate worker` in its own folder and waits until its
// model is loaded.
func startWorker(t *testing.T, url, name string, batch int) *worker {
	t.Helper()
	m3gate, _, _ := binaries(t)
	dir := t.TempDir()
	writeWorkerConfig(t, dir, url, batch, "")
	p := startProc(t, "m3gate worker "+name, dir, m3gate, "worker", "--name", name)
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.stderr.String(), "m3gate worker ready") {
		if p.exited() {
			t.Fatalf("worker %s exited during startup (%v):\n%s", name, p.err, p.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %s not ready after 60s:\n%s", name, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &worker{proc: p, name: name}
}

// startQueueServer starts an embedded JetStream server with a file store
// under dir on listen ("127.0.0.1:0" for a free port).
func startQueueServer(t *testing.T, dir, listen string) *queue.Embedded {
	t.Helper()
	e, err := queue.StartEmbedded(queue.EmbeddedConfig{Dir: dir, Listen: listen})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

// producer connects a queue producer to url.
func producer(t *testing.T, url, name string) *queue.Producer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := queue.Connect(ctx, queue.ClientConfig{URL: url, Name: name, Settings: queueSettings()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p, err := queue.NewProducer(ctx, c, queue.ProducerConfig{Name: name, PollInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// tinyPNG is a 16×16 picture whose colours depend on n.
func tinyPNG(t *testing.T, n int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, 16, 16))
	for y := range 16 {
		for x := range 16 {
			img.SetNRGBA(x, y, color.NRGBA{uint8(n*37 + x*9), uint8(n*11 + y*13), uint8(n * 3), 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// job is one image published by a test producer.
type job struct {
	n      int
	prompt string
	png    []byte
	sub    *queue.Submitted
}

// submitAll publishes jobs through p, one per image; tokens > 0 asks for
// longer descriptions (slower jobs).
func submitAll(t *testing.T, ctx context.Context, p *queue.Producer, jobs []*job, tokens int) {
	t.Helper()
	for _, j := range jobs {
		s, err := p.Submit(ctx, queue.Job{Prompt: j.prompt, Aspects: []string{"quality"}, MaxNewTokens: tokens, Thresholds: map[string]float64{"quality": 2.5}}, j.png)
		if err != nil {
			t.Error(err)
			return
		}
		j.sub = s
	}
}

// makeJobs makes n jobs numbered from first with prompt.
func makeJobs(t *testing.T, first, n int, prompt string) []*job {
	out := make([]*job, n)
	for i := range out {
		out[i] = &job{n: first + i, prompt: prompt, png: tinyPNG(t, first+i)}
	}
	return out
}

// waitAll waits for every job's result.
func waitAll(t *testing.T, ctx context.Context, p *queue.Producer, jobs []*job) map[int]queue.Result {
	t.Helper()
	out := map[int]queue.Result{}
	for _, j := range jobs {
		if j.sub == nil {
			t.Fatalf("job %d was not published", j.n)
		}
		r, err := p.Wait(ctx, j.sub)
		if err != nil {
			t.Fatalf("job %d: %v", j.n, err)
		}
		out[j.n] = r
	}
	return out
}

// scoreLocally scores the jobs' images with `m3gate score` (its own model
// process, same model and options) and returns the quality MOS by job.
func scoreLocally(t *testing.T, jobs []*job) map[int]float64 {
	t.Helper()
	m3gate, _, _ := binaries(t)
	dir := t.TempDir()
	writeWorkerConfig(t, dir, "", 1, "")
	var manifest bytes.Buffer
	names := map[string]int{}
	for _, j := range jobs {
		name := filepath.Join(dir, fmt.Sprintf("img%03d.png", j.n))
		if err := os.WriteFile(name, j.png, 0o644); err != nil {
			t.Fatal(err)
		}
		names[name] = j.n
		line, _ := json.Marshal(map[string]string{"image": name, "prompt": j.prompt})
		manifest.Write(append(line, '\n'))
	}
	pf := filepath.Join(dir, "prompts.jsonl")
	if err := os.WriteFile(pf, manifest.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(m3gate, "score", "--prompts-file", pf, "--json")
	cmd.Dir, cmd.Env = dir, childEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("m3gate score: %v\n%s", err, stderr.String())
	}
	got := map[int]float64{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var line struct {
			Path    string                     `json:"path"`
			Aspects map[string]api.AspectScore `json:"aspects"`
			Error   string                     `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("m3gate score line %s: %v", sc.Bytes(), err)
		}
		n, ok := names[line.Path]
		if !ok || line.Error != "" {
			t.Fatalf("m3gate score line %s", sc.Bytes())
		}
		got[n] = line.Aspects["quality"].MOS
	}
	if len(got) != len(jobs) {
		t.Fatalf("m3gate score scored %d of %d images", len(got), len(jobs))
	}
	return got
}

// resultHistory returns the number of recorded values per key of the
// result bucket.
func resultHistory(t *testing.T, ctx context.Context, url string) map[string]int {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(ctx, queue.Settings{}.WithDefaults().Results)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for k := range keys.Keys() {
		h, err := kv.History(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = len(h)
	}
	return out
}

// checkOnce checks that every job has exactly one recorded result, and
// that there are others results besides.
func checkOnce(t *testing.T, ctx context.Context, url string, others int, jobs ...[]*job) {
	t.Helper()
	hist := resultHistory(t, ctx, url)
	n := 0
	for _, js := range jobs {
		for _, j := range js {
			n++
			if c := hist[j.sub.ID]; c != 1 {
				t.Errorf("job %d (%s): %d recorded results, want 1", j.n, j.sub.ID, c)
			}
		}
	}
	if n += others; len(hist) != n {
		t.Errorf("%d results recorded for %d jobs", len(hist), n)
	}
}

// drainedCounts parses a drained worker's summary line: jobs scored,
// duplicates (found recorded already) and redelivered jobs received.
func drainedCounts(t *testing.T, w *worker) (scored, duplicates, redeliv int) {
	t.Helper()
	var failed, back int
	s := w.stderr.String()
	i := strings.Index(s, "m3gate worker drained: ")
	if i < 0 {
		t.Fatalf("worker %s printed no drain summary:\n%s", w.name, s)
	}
	if _, err := fmt.Sscanf(s[i:], "m3gate worker drained: %d scored, %d failed, %d duplicates, %d handed back, %d redelivered",
		&scored, &failed, &duplicates, &back, &redeliv); err != nil {
		t.Fatalf("worker %s summary: %v\n%s", w.name, err, s[i:])
	}
	return scored, duplicates, redeliv
}

// TestQueueThreeWorkers: 3 workers, 200 jobs from 2 producers; one worker
// is stopped with SIGTERM midway and drains. Every job has exactly one
// result, equal to scoring the same image locally.
func TestQueueThreeWorkers(t *testing.T) {
	binaries(t)
	checkNoLeaks(t)
	e := startQueueServer(t, t.TempDir(), "127.0.0.1:0")
	ws := []*worker{startWorker(t, e.URL(), "w1", 4), startWorker(t, e.URL(), "w2", 4), startWorker(t, e.URL(), "w3", 4)}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pa, pb := producer(t, e.URL(), "pa"), producer(t, e.URL(), "pb")
	ja, jb := makeJobs(t, 0, 100, "a red fox in the snow"), makeJobs(t, 100, 100, "a blue car")
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); submitAll(t, ctx, pa, ja, 0) }()
	go func() { defer wg.Done(); submitAll(t, ctx, pb, jb, 0) }()
	wg.Wait()
	if t.Failed() {
		return
	}

	// Stop w3 once the first results are in: it drains and exits 0.
	if _, err := pa.Wait(ctx, ja[0].sub); err != nil {
		t.Fatal(err)
	}
	if code := ws[2].stop(t, 30*time.Second); code != 0 {
		t.Errorf("worker w3 exit code %d after SIGTERM, want 0:\n%s", code, ws[2].stderr.String())
	}
	got := waitAll(t, ctx, pa, ja)
	for n, r := range waitAll(t, ctx, pb, jb) {
		got[n] = r
	}
	checkOnce(t, ctx, e.URL(), 0, ja, jb)

	want := scoreLocally(t, append(append([]*job{}, ja...), jb...))
	byWorker := map[string]int{}
	for n, r := range got {
		byWorker[r.Worker]++
		if r.Error != "" {
			t.Errorf("job %d: %s", n, r.Error)
			continue
		}
		if g, w := r.Aspects["quality"].MOS, want[n]; math.Abs(g-w) > 1e-6 {
			t.Errorf("job %d: MOS %.9f through the queue, %.9f locally", n, g, w)
		}
		if r.Passed == nil || *r.Passed != (r.Aspects["quality"].MOS >= 2.5) {
			t.Errorf("job %d: passed %v for MOS %v and threshold 2.5", n, r.Passed, r.Aspects["quality"].MOS)
		}
	}
	total, dups := 0, 0
	for _, w := range ws {
		if w.exited() {
			continue
		}
		if code := w.stop(t, 30*time.Second); code != 0 {
			t.Errorf("worker %s exit code %d after SIGTERM:\n%s", w.name, code, w.stderr.String())
		}
	}
	for _, w := range ws {
		s, d, _ := drainedCounts(t, w)
		total += s
		dups += d
		if s != byWorker[w.name] {
			t.Errorf("worker %s says it scored %d, results name it %d times", w.name, s, byWorker[w.name])
		}
	}
	if total != 200 || dups != 0 {
		t.Errorf("workers scored %d jobs with %d duplicates, want 200 and 0", total, dups)
	}
	t.Logf("results per worker: %v", byWorker)
}

// TestQueueWorkerKilled: SIGKILL a worker holding jobs; they are
// redelivered and scored by another worker, none lost, none recorded
// twice. A corrupt image ends with an error result on its first delivery.
func TestQueueWorkerKilled(t *testing.T) {
	binaries(t)
	checkNoLeaks(t)
	e := startQueueServer(t, t.TempDir(), "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := producer(t, e.URL(), "p")
	jobs := makeJobs(t, 0, 60, "a statue")
	corrupt := &job{n: 999, prompt: "x", png: []byte("\x89PNG\r\n\x1a\n but not really")}
	submitAll(t, ctx, p, append(jobs, corrupt), 48)

	// Kill a worker while it holds jobs: after its first results, when the
	// servers count jobs in flight. Its last batch may be acked between
	// the look and the kill; then a new victim tries again.
	var held, victimSidecar int
	for try := 1; held == 0; try++ {
		if try > 5 {
			t.Fatal("no victim held jobs when killed, 5 tries")
		}
		victim := startWorker(t, e.URL(), fmt.Sprint("victim", try), 4)
		victimSidecar = 0
		for _, c := range children(victim.cmd.Process.Pid) {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c)); strings.TrimSpace(string(b)) == "m3gate-sidecar" {
				victimSidecar = c
			}
		}
		if victimSidecar == 0 {
			t.Fatal("worker has no m3gate-sidecar child")
		}
		for deadline := time.Now().Add(30 * time.Second); !victim.exited(); {
			info, err := p.Client().Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.InFlight > 0 && p.Stats().ByWorker[victim.name] > 0 {
				victim.cmd.Process.Signal(syscall.SIGKILL)
				<-victim.done
				if info, err = p.Client().Info(ctx); err != nil {
					t.Fatal(err)
				}
				held = info.InFlight
			}
			if time.Now().After(deadline) {
				t.Fatalf("victim took no jobs in 30s (info %+v)", info)
			}
			time.Sleep(time.Millisecond)
		}
		if held == 0 {
			t.Logf("victim %d held nothing when killed; again", try)
		}
	}
	t.Logf("victim killed holding %d jobs", held)
	// Its model process notices and exits too.
	for deadline := time.Now().Add(5 * time.Second); victimSidecar != 0 && processAlive(victimSidecar); {
		if time.Now().After(deadline) {
			syscall.Kill(victimSidecar, syscall.SIGKILL)
			t.Errorf("the killed worker's sidecar %d still runs after 5s", victimSidecar)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	rescuer := startWorker(t, e.URL(), "rescuer", 4)
	got := waitAll(t, ctx, p, jobs)
	redelivered := 0
	for n, r := range got {
		if r.Error != "" {
			t.Errorf("job %d: %s", n, r.Error)
		}
		if r.Deliveries > 1 {
			redelivered++
			if r.Worker != "rescuer" {
				t.Errorf("redelivered job %d scored by %s", n, r.Worker)
			}
		}
	}
	bad, err := p.Wait(ctx, corrupt.sub)
	if err != nil {
		t.Fatal(err)
	}
	if bad.Error == "" || bad.Deliveries > queueSettings().MaxDeliver {
		t.Errorf("corrupt image: %+v, want an error within %d deliveries", bad, queueSettings().MaxDeliver)
	}
	t.Logf("corrupt image: %q after %d deliveries", bad.Error, bad.Deliveries)
	if bad.Deliveries > 1 {
		redelivered++
	}
	// The jobs it held come to the rescuer; those it had recorded before
	// dying are acked without a second result, the others are scored.
	if code := rescuer.stop(t, 30*time.Second); code != 0 {
		t.Errorf("rescuer exit code %d", code)
	}
	_, dups, got2 := drainedCounts(t, rescuer)
	// The consumer's pending count read right after the kill can include
	// jobs whose ack the server was still processing, so the rescuer may
	// receive fewer than held; what it receives is either recorded already
	// or scored again, never more than held (checkOnce below proves one
	// result per job).
	if got2 > held || dups+redelivered != got2 {
		t.Errorf("rescuer received %d redelivered jobs (%d already recorded, %d scored again); the victim held %d",
			got2, dups, redelivered, held)
	}
	t.Logf("rescuer: %d held jobs scored again, %d found recorded by the victim", redelivered, dups)
	checkOnce(t, ctx, e.URL(), 0, jobs, []*job{corrupt})
}

// TestQueueServerRestart restarts the JetStream server (file store) while
// a producer publishes and two workers score: both reconnect, nothing is
// lost, nothing recorded twice.
func TestQueueServerRestart(t *testing.T) {
	binaries(t)
	checkNoLeaks(t)
	dir := t.TempDir()
	e := startQueueServer(t, dir, "127.0.0.1:0")
	listen := strings.TrimPrefix(e.URL(), "nats://")
	ws := []*worker{startWorker(t, e.URL(), "w1", 2), startWorker(t, e.URL(), "w2", 2)}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := producer(t, e.URL(), "p")
	jobs := makeJobs(t, 0, 80, "a lighthouse")
	published := make(chan struct{})
	var submitted atomic.Int64
	go func() {
		defer close(published)
		for _, j := range jobs {
			submitAll(t, ctx, p, []*job{j}, 16)
			submitted.Add(1)
		}
	}()
	if deadline := time.Now().Add(time.Minute); true {
		for submitted.Load() < 20 || p.Stats().ByWorker["w1"]+p.Stats().ByWorker["w2"] < 5 {
			if time.Now().After(deadline) {
				t.Fatal("no results before the restart")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	e.Shutdown()
	time.Sleep(500 * time.Millisecond)
	startQueueServer(t, dir, listen)
	<-published
	got := waitAll(t, ctx, p, jobs)
	for n, r := range got {
		if r.Error != "" {
			t.Errorf("job %d: %s", n, r.Error)
		}
	}
	checkOnce(t, ctx, "nats://"+listen, 0, jobs)
	if p.Restarts() == 0 {
		t.Error("producer did not reconnect")
	}
	for _, w := range ws {
		if code := w.stop(t, 30*time.Second); code != 0 {
			t.Errorf("worker %s exit code %d:\n%s", w.name, code, w.stderr.String())
		}
	}
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestServeEmbeddedQueue: `m3gate serve --queue embedded` answers the node
// pack's score requests through its queue and its own worker, exports the
// queue on /metrics, and keeps queued jobs in its file store across a
// restart.
func TestServeEmbeddedQueue(t *testing.T) {
	m3gate, _, _ := binaries(t)
	checkNoLeaks(t)
	dir := t.TempDir()
	natsAddr, httpAddr := freeAddr(t), freeAddr(t)
	writeWorkerConfig(t, dir, "embedded", 4, fmt.Sprintf("  listen: %q\n  data_dir: %q\ndaemon:\n  listen: %q\n", natsAddr, filepath.Join(dir, "queue"), httpAddr))
	start := func() *proc {
		p := startProc(t, "m3gate serve", dir, m3gate, "serve")
		for deadline := time.Now().Add(60 * time.Second); ; {
			if resp, err := http.Get("http://" + httpAddr + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return p
				}
			}
			if p.exited() || time.Now().After(deadline) {
				t.Fatalf("daemon not ready:\n%s", p.stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	d := start()

	// The node pack's request goes through the queue.
	body, _ := json.Marshal(map[string]any{"images": []map[string]string{{"data": base64.StdEncoding.EncodeToString(tinyPNG(t, 1))}}, "prompt": "a fox", "aspects": []string{"quality"}})
	resp, err := http.Post("http://"+httpAddr+api.PathScore, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var ans api.ScoreResponse
	json.NewDecoder(resp.Body).Decode(&ans)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(ans.Results) != 1 || ans.Results[0].Error != "" || ans.Results[0].Aspects["quality"].Rating == "" {
		t.Fatalf("score through the queue: HTTP %d %+v", resp.StatusCode, ans)
	}
	// The worker acks a job just after storing its result (which is what
	// answered the request), so in-flight reaches 0 a moment later.
	want := []string{"m3gate_queue_depth 0", "m3gate_queue_in_flight 0", "m3gate_queue_results_total{worker=", "m3gate_queue_up 1"}
	var metrics bytes.Buffer
	var missing []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		mresp, err := http.Get("http://" + httpAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics.Reset()
		metrics.ReadFrom(mresp.Body)
		mresp.Body.Close()
		missing = missing[:0]
		for _, m := range want {
			if !strings.Contains(metrics.String(), m) {
				missing = append(missing, m)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, m := range missing {
		t.Errorf("/metrics lacks %q:\n%s", m, grepLines(metrics.String(), "m3gate_queue"))
	}

	// Jobs published by another producer, then the daemon stops before
	// its worker can score them all; after the restart every one gets its
	// result.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := producer(t, "nats://"+natsAddr, "remote")
	jobs := makeJobs(t, 0, 40, "a boat")
	submitAll(t, ctx, p, jobs, 48) // long descriptions keep the worker busy
	if code := d.stop(t, 30*time.Second); code != 0 {
		t.Errorf("daemon exit code %d:\n%s", code, d.stderr.String())
	}
	before := 0
	for _, n := range p.Stats().ByWorker {
		before += n
	}
	if before-1 >= len(jobs) { // the node pack's request counts too
		t.Fatalf("the daemon scored all %d jobs before it stopped; nothing was left queued", len(jobs))
	}
	t.Logf("%d of %d jobs scored before the restart", before-1, len(jobs))
	d = start()
	got := waitAll(t, ctx, p, jobs)
	for n, r := range got {
		if r.Error != "" {
			t.Errorf("job %d: %s", n, r.Error)
		}
	}
	checkOnce(t, ctx, "nats://"+natsAddr, 1, jobs) // and the node pack's request
	if code := d.stop(t, 30*time.Second); code != 0 {
		t.Errorf("daemon exit code %d:\n%s", code, d.stderr.String())
	}
}

// TestRunThroughQueue: two `m3gate run` processes spread over two ComfyUI
// servers publish their images to the queue (no daemon runs) and two
// workers score them; every image of results.jsonl has exactly one queue
// result with the same score.
func TestRunThroughQueue(t *testing.T) {
	m3gate, _, _ := binaries(t)
	checkNoLeaks(t)
	fa, _ := startFake(t)
	fb, _ := startFake(t)
	e := startQueueServer(t, t.TempDir(), "127.0.0.1:0")
	ws := []*worker{startWorker(t, e.URL(), "w1", 4), startWorker(t, e.URL(), "w2", 4)}
	wfPath, _ := readWorkflow(t, "txt2img-api.json")
	var runs []*proc
	var outs []string
	for i := range 2 {
		dir := t.TempDir()
		writeWorkerConfig(t, dir, e.URL(), 4, fmt.Sprintf("comfyui:\n  servers: [%q, %q]\n  reconnect_min: 50ms\n  reconnect_max: 500ms\n", fa.URL(), fb.URL()))
		out := filepath.Join(dir, "out")
		outs = append(outs, out)
		runs = append(runs, startProc(t, "m3gate run", dir, m3gate, "run", wfPath, "--count", "4", "--threshold", "quality=0",
			"--out", out, "--rand-seed", strconv.Itoa(20+i)))
	}
	for _, p := range runs {
		if code := p.wait(t, 90*time.Second); code != 0 {
			t.Fatalf("m3gate run exit %d:\n%s\n%s", code, p.stdout.String(), p.stderr.String())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(e.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(ctx, queue.Settings{}.WithDefaults().Results)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mos []float64
	for k := range keys.Keys() {
		h, err := kv.History(ctx, k)
		if err != nil || len(h) != 1 {
			t.Fatalf("result %s: %d values (%v), want 1", k, len(h), err)
		}
		var r queue.Result
		if err := json.Unmarshal(h[0].Value(), &r); err != nil || r.Error != "" || r.Passed == nil || !*r.Passed {
			t.Fatalf("result %s: %s (%v)", k, h[0].Value(), err)
		}
		mos = append(mos, r.Aspects["quality"].MOS)
	}
	lines := 0
	for _, out := range outs {
		for _, r := range readLines[struct {
			Accepted bool                             `json:"accepted"`
			Scores   map[string]struct{ MOS float64 } `json:"scores"`
		}](t, filepath.Join(out, "results.jsonl")) {
			lines++
			found := false
			for _, m := range mos {
				found = found || math.Abs(m-r.Scores["quality"].MOS) <= 1e-9
			}
			if !r.Accepted || !found {
				t.Errorf("results.jsonl line %+v: not accepted, or no queue result with its score", r)
			}
		}
	}
	if lines != len(mos) || lines < 8 {
		t.Errorf("%d results.jsonl lines, %d queue results; want equal and at least 8", lines, len(mos))
	}
	for _, w := range ws {
		if code := w.stop(t, 30*time.Second); code != 0 {
			t.Errorf("worker %s exit %d", w.name, code)
		}
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
