package config

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Allowed values of enumerated keys.
var (
	Families = []string{"idefics3", "minicpmv25"}
	DTypes   = []string{"f32", "mixed", "bf16"}
	Gates    = []string{"all", "any"}
	Levels   = []string{"debug", "info", "warn", "error"}
	Formats  = []string{"text", "json"}
)

// Limits of numeric keys (inclusive).
const (
	MaxThreads      = 1024
	MaxNewTokensMax = 4096
	// MaxPromptTokensMax is the largest model.max_prompt_tokens.
	MaxPromptTokensMax = 32768
	MaxScore           = 5.0
	MaxRerollsMax      = 100
	MaxBatchSize       = 64
	MaxQueueSize       = 100000
	MaxImagesMax       = 1024
	MaxSubscribersMax  = 100000
)

// Validate checks every key's value and range. It returns nil or Errors
// naming each bad key (Source and Line are filled in by Load).
func (c Config) Validate() error {
	var errs Errors
	bad := func(key, format string, args ...any) {
		errs = append(errs, &FieldError{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	oneOf := func(key, v string, allowed []string) {
		if !slices.Contains(allowed, v) {
			bad(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
		}
	}
	intRange := func(key string, v, lo, hi int) {
		if v < lo || v > hi {
			bad(key, "%d is out of range [%d, %d]", v, lo, hi)
		}
	}
	positive := func(key string, d time.Duration) {
		if d <= 0 {
			bad(key, "duration must be positive, got %s", d)
		}
	}
	aspectMap := func(key string, keys []string) {
		sort.Strings(keys)
		for _, k := range keys {
			if err := iqa.CheckAspect(k); err != nil {
				bad(key+"."+k, "%v", err)
			}
		}
	}

	m := c.Model
	if m.Dir == "" {
		bad("model.dir", "must be set to a model directory (try `m3gate model fetch smolvlm-256m`)")
	}
	oneOf("model.family", m.Family, Families)
	oneOf("model.dtype", m.DType, DTypes)
	if !validDevice(m.Device) {
		bad("model.device", "%q is not cpu, cuda or cuda:N", m.Device)
	}
	intRange("model.threads", m.Threads, 0, MaxThreads)
	intRange("model.max_new_tokens", m.MaxNewTokens, 1, MaxNewTokensMax)
	intRange("model.max_prompt_tokens", m.MaxPromptTokens, 16, MaxPromptTokensMax)
	aspectMap("model.adapters", mapKeys(m.Adapters))
	aspectMap("model.predictors", mapKeys(m.Predictors))
	for _, k := range sortedKeys(m.Adapters) {
		if m.Adapters[k] == "" {
			bad("model.adapters."+k, "empty path")
		}
	}
	for _, k := range sortedKeys(m.Predictors) {
		if m.Predictors[k] == "" {
			bad("model.predictors."+k, "empty path")
		}
	}

	s := c.Scoring
	if len(s.Aspects) == 0 {
		bad("scoring.aspects", "needs at least one aspect (%s)", strings.Join(iqa.Aspects, ", "))
	}
	for i, a := range s.Aspects {
		key := fmt.Sprintf("scoring.aspects[%d]", i)
		switch {
		case !iqa.IsAspect(a):
			bad(key, "%v", iqa.CheckAspect(a))
		case slices.Index(s.Aspects, a) < i:
			bad(key, "aspect %q listed twice", a)
		case func() bool { _, ok := s.Thresholds[a]; return !ok }():
			bad("scoring.thresholds", "no threshold for scored aspect %q", a)
		}
	}
	thresholdKeys := make([]string, 0, len(s.Thresholds))
	for k := range s.Thresholds {
		thresholdKeys = append(thresholdKeys, k)
	}
	aspectMap("scoring.thresholds", thresholdKeys)
	for _, k := range thresholdKeys {
		if t := s.Thresholds[k]; t < 0 || t > MaxScore {
			bad("scoring.thresholds."+k, "%g is out of range [0, 5] (the MOS scale)", t)
		}
	}
	oneOf("scoring.gate", s.Gate, Gates)
	intRange("scoring.max_rerolls", s.MaxRerolls, 0, MaxRerollsMax)
	intRange("scoring.batch_size", s.BatchSize, 1, MaxBatchSize)

	cu := c.ComfyUI
	if len(cu.Servers) == 0 {
		bad("comfyui.servers", "needs at least one server URL such as http://127.0.0.1:8188")
	}
	for i, srv := range cu.Servers {
		key := fmt.Sprintf("comfyui.servers[%d]", i)
		if err := checkServerURL(srv); err != nil {
			bad(key, "%v", err)
		} else if slices.Index(cu.Servers, srv) < i {
			bad(key, "server %q listed twice", srv)
		}
	}
	positive("comfyui.reconnect_min", cu.ReconnectMin)
	positive("comfyui.reconnect_max", cu.ReconnectMax)
	if cu.ReconnectMax > 0 && cu.ReconnectMax < cu.ReconnectMin {
		bad("comfyui.reconnect_max", "%s is less than reconnect_min %s", cu.ReconnectMax, cu.ReconnectMin)
	}

	d := c.Daemon
	if err := checkListen(d.Listen); err != nil {
		bad("daemon.listen", "%v", err)
	}
	intRange("daemon.queue_size", d.QueueSize, 1, MaxQueueSize)
	positive("daemon.request_timeout", d.RequestTimeout)
	for i, h := range d.AllowedHosts {
		if h == "" || strings.ContainsAny(h, " /:") {
			bad(fmt.Sprintf("daemon.allowed_hosts[%d]", i), "%q is not a host name", h)
		}
	}
	for i, o := range d.AllowedOrigins {
		if u, err := url.Parse(o); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" {
			bad(fmt.Sprintf("daemon.allowed_origins[%d]", i), "%q is not an origin such as http://127.0.0.1:8188", o)
		}
	}
	for i, r := range d.PathRoots {
		if !filepath.IsAbs(r) {
			bad(fmt.Sprintf("daemon.path_roots[%d]", i), "%q is not an absolute directory", r)
		}
	}
	if d.AllowPaths && len(d.PathRoots) == 0 {
		bad("daemon.path_roots", "allow_paths is on but no path_roots are set: name the directories images may be read from")
	}
	intRange("daemon.max_image_bytes", d.MaxImageBytes, 1024, 1<<30)
	intRange("daemon.max_images", d.MaxImages, 1, MaxImagesMax)
	intRange("daemon.max_inflight_bytes", d.MaxInflightBytes, 1<<20, 1<<40)
	positive("daemon.body_timeout", d.BodyTimeout)
	intRange("daemon.min_upload_rate", d.MinUploadRate, 0, 1<<30)
	positive("daemon.shutdown_grace", d.ShutdownGrace)
	intRange("daemon.max_subscribers", d.MaxSubscribers, 1, MaxSubscribersMax)

	sc := c.Sidecar
	positive("sidecar.start_timeout", sc.StartTimeout)
	positive("sidecar.load_stall_timeout", sc.LoadStallTimeout)
	positive("sidecar.busy_timeout", sc.BusyTimeout)
	positive("sidecar.restart_backoff_max", sc.RestartBackoffMax)

	oneOf("log.level", c.Log.Level, Levels)
	oneOf("log.format", c.Log.Format, Formats)

	q := c.Queue
	if err := checkQueueURL(q.URL); err != nil {
		bad("queue.url", "%v", err)
	}
	if err := checkListen(q.Listen); err != nil {
		bad("queue.listen", "%v", err)
	}
	if (q.TLSCert == "") != (q.TLSKey == "") {
		bad("queue.tls_key", "tls_cert and tls_key go together")
	}
	positive("queue.ack_wait", q.AckWait)
	intRange("queue.max_ack_pending", q.MaxAckPending, 1, 1000000)
	intRange("queue.max_deliver", q.MaxDeliver, 2, 100)
	positive("queue.nak_delay", q.NakDelay)
	intRange("queue.max_jobs", q.MaxJobs, 1, 100000000)
	intRange("queue.replicas", q.Replicas, 1, 5)

	if len(errs) == 0 {
		return nil
	}
	return errs
}

func validDevice(d string) bool {
	if d == "cpu" || d == "cuda" {
		return true
	}
	n, ok := strings.CutPrefix(d, "cuda:")
	if !ok {
		return false
	}
	i, err := strconv.Atoi(n)
	return err == nil && i >= 0 && i < 1024
}

func checkServerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("bad URL %q: %v", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("URL %q must start with http:// or https://", s)
	}
	if u.Host == "" {
		return fmt.Errorf("URL %q has no host", s)
	}
	if u.Port() != "" {
		if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("URL %q has a bad port", s)
		}
	}
	return nil
}

// checkQueueURL accepts "", "embedded" or comma-separated nats://, tls://
// or ws(s):// URLs.
func checkQueueURL(s string) error {
	if s == "" || s == "embedded" {
		return nil
	}
	for _, part := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			return fmt.Errorf("bad URL %q: %v", part, err)
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("URL %q: want embedded or nats://host:4222 (tls://, ws://, wss:// also work)", part)
		}
		if u.Host == "" {
			return fmt.Errorf("URL %q has no host", part)
		}
	}
	return nil
}

func checkListen(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port such as 127.0.0.1:8190, got %q", s)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("bad host %q", host)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("port %q is not a number in 0..65535", port)
	}
	return nil
}

func mapKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

func sortedKeys[V any](m map[string]V) []string {
	keys := mapKeys(m)
	sort.Strings(keys)
	return keys
}
