package main

import (
	"context"
	"fmt"

	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/sidecar/service"
)

// engine is the scoring engine the sidecar serves.
//
// LEAD: plug the real M3-AGIQA scorer in here, e.g.
//
//	var engine service.Engine = m3.NewEngine()
//
// (sidecar/m3 implementing service.Engine). Until then every Load fails
// with schemas.ErrNoScorer, which the host reports as such.
var engine service.Engine = noScorer{}

// noScorer is the engine of a sidecar built without a scorer.
type noScorer struct{}

func (noScorer) Load(ctx context.Context, req schemas.LoadRequest, progress func(schemas.LoadProgress)) error {
	return fmt.Errorf("m3gate-sidecar: %w (this binary has no M3-AGIQA engine wired in sidecar/cmd/m3gate-sidecar/engine.go)", schemas.ErrNoScorer)
}

func (noScorer) Score(ctx context.Context, items []schemas.ScoreItem, opts schemas.ScoreOptions) ([]schemas.ItemResult, error) {
	return nil, fmt.Errorf("m3gate-sidecar: %w", schemas.ErrNoScorer)
}

func (noScorer) Unload(ctx context.Context) error { return nil }

func (noScorer) Info() schemas.ModelInfo { return schemas.ModelInfo{} }
