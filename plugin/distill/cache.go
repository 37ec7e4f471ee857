package distill

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Entry is one line of the cache: the outcome of one paid teacher answer.
type Entry struct {
	Key string `json:"key"`
	// Status is "ok" or "failed" (the teacher answered but never in the
	// required form). Transport failures (429/5xx exhausted, network) are
	// not cached, so a rerun tries them again.
	Status       string            `json:"status"`
	Image        string            `json:"image"`
	Model        string            `json:"model"`
	TemplateHash string            `json:"template_hash"`
	Descriptions map[string]string `json:"descriptions,omitempty"`
	Error        string            `json:"error,omitempty"`
	// Answer keeps the start of the last raw answer of a failed entry.
	Answer   string `json:"answer,omitempty"`
	Attempts int    `json:"attempts"`
	Usage    Usage  `json:"usage"`
}

// Entry statuses.
const (
	StatusOK     = "ok"
	StatusFailed = "failed"
)

// CacheKey identifies one teacher question: the image's content, the model
// and the fully rendered teacher prompt (which holds the text prompt, the
// MOS values and the template), plus the template hash for clarity.
func CacheKey(imageSHA, model, templateHash, renderedPrompt string) string {
	h := sha256.New()
	for _, s := range []string{imageSHA, model, templateHash, renderedPrompt} {
		fmt.Fprintf(h, "%d:%s\n", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Cache is an append-only JSONL file of entries. Each append is fsynced;
// a half-written last line (after a kill) is ignored on load and the next
// append starts on a fresh line.
type Cache struct {
	mu      sync.Mutex
	f       *os.File
	entries map[string]Entry
	// Torn counts unparsable lines skipped on load.
	Torn int
}

// OpenCache loads (or creates) a cache file.
func OpenCache(path string) (*Cache, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open cache: %w", err)
	}
	c := &Cache{f: f, entries: map[string]Entry{}}
	b, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read cache %s: %w", path, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil || e.Key == "" {
			c.Torn++
			continue
		}
		c.entries[e.Key] = e // a later line wins
	}
	if err := sc.Err(); err != nil {
		f.Close()
		return nil, fmt.Errorf("read cache %s: %w", path, err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		if _, err := f.Write([]byte{'\n'}); err != nil {
			f.Close()
			return nil, fmt.Errorf("repair cache %s: %w", path, err)
		}
	}
	return c, nil
}

// Get returns the entry of a key.
func (c *Cache) Get(key string) (Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	return e, ok
}

// Len returns the number of entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Put appends an entry and fsyncs the file.
func (c *Cache) Put(e Entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("cache put: %w", err)
	}
	b = append(b, '\n')
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return errors.New("cache put: cache closed")
	}
	if _, err := c.f.Write(b); err != nil {
		return fmt.Errorf("cache put: %w", err)
	}
	if err := c.f.Sync(); err != nil {
		return fmt.Errorf("cache put: %w", err)
	}
	c.entries[e.Key] = e
	return nil
}

// Close closes the file.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return nil
	}
	err := c.f.Close()
	c.f = nil
	return err
}
