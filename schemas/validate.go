package schemas

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
)

// Errors the contract carries across the process boundary. They keep their
// identity (errors.Is) after a trip through gRPC.
var (
	// ErrNoScorer says the sidecar binary was built without a scoring engine.
	ErrNoScorer = errors.New("no scorer built in")
	// ErrNotLoaded says no model is loaded (Load was not called or failed).
	ErrNotLoaded = errors.New("no model loaded")
	// ErrInvalid marks a request the scorer refuses as malformed.
	ErrInvalid = errors.New("invalid request")
	// ErrUnavailable says the model process could not be reached.
	ErrUnavailable = errors.New("model process unreachable")
)

// Validate reports whether the item names exactly one image source and, for
// a path, an absolute one.
func (it ScoreItem) Validate() error {
	switch {
	case len(it.Data) > 0 && it.Path != "":
		return fmt.Errorf("%w: image has both data and a path", ErrInvalid)
	case len(it.Data) == 0 && it.Path == "":
		return fmt.Errorf("%w: image has neither data nor a path", ErrInvalid)
	case it.Path != "" && !filepath.IsAbs(it.Path):
		return fmt.Errorf("%w: image path %q is not absolute", ErrInvalid, it.Path)
	}
	return nil
}

// Validate checks a score request before it is sent or queued.
func (r ScoreRequest) Validate() error {
	if len(r.Items) == 0 {
		return fmt.Errorf("%w: no images", ErrInvalid)
	}
	for i, it := range r.Items {
		if err := it.Validate(); err != nil {
			return fmt.Errorf("image %d: %w", i, err)
		}
	}
	return r.Options.Validate()
}

// Validate checks the options: at least one aspect, no empty or repeated
// aspect names, no negative token budget.
func (o ScoreOptions) Validate() error {
	if len(o.Aspects) == 0 {
		return fmt.Errorf("%w: no aspects", ErrInvalid)
	}
	seen := make(map[string]bool, len(o.Aspects))
	for _, a := range o.Aspects {
		if a == "" {
			return fmt.Errorf("%w: empty aspect name", ErrInvalid)
		}
		if seen[a] {
			return fmt.Errorf("%w: aspect %q repeated", ErrInvalid, a)
		}
		seen[a] = true
	}
	if o.MaxNewTokens < 0 {
		return fmt.Errorf("%w: max_new_tokens %d is negative", ErrInvalid, o.MaxNewTokens)
	}
	return nil
}

// Key returns a string equal for two options exactly when they are equal;
// requests with the same key can share a batch.
func (o ScoreOptions) Key() string {
	b, err := json.Marshal(o) // map keys are sorted, so the encoding is canonical
	if err != nil {
		return fmt.Sprintf("%#v", o)
	}
	return string(b)
}

// Validate checks that a load request names a model directory and a family.
func (r LoadRequest) Validate() error {
	if r.ModelDir == "" {
		return fmt.Errorf("%w: no model_dir", ErrInvalid)
	}
	if r.Family == "" {
		return fmt.Errorf("%w: no family", ErrInvalid)
	}
	if r.Threads < 0 {
		return fmt.Errorf("%w: threads %d is negative", ErrInvalid, r.Threads)
	}
	return nil
}
