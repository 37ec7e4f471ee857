package schemas

import (
	"fmt"
	"maps"
	"time"

	pb "github.com/m3gate/m3gate/schemas/gen/m3gatev1"
)

// The conversion layer: every proto <-> domain conversion lives here and is
// unexported, so protobuf types never leak out of this package.

func loadRequestToProto(r LoadRequest) *pb.LoadRequest {
	return &pb.LoadRequest{
		ModelDir:   r.ModelDir,
		Family:     r.Family,
		Adapters:   maps.Clone(r.Adapters),
		Predictors: maps.Clone(r.Predictors),
		Device:     r.Device,
		Dtype:      r.DType,
		Threads:    int32(r.Threads),
		Options:    maps.Clone(r.Options),
	}
}

func loadRequestFromProto(p *pb.LoadRequest) LoadRequest {
	return LoadRequest{
		ModelDir:   p.GetModelDir(),
		Family:     p.GetFamily(),
		Adapters:   nonEmpty(p.GetAdapters()),
		Predictors: nonEmpty(p.GetPredictors()),
		Device:     p.GetDevice(),
		DType:      p.GetDtype(),
		Threads:    int(p.GetThreads()),
		Options:    nonEmpty(p.GetOptions()),
	}
}

func progressToProto(p LoadProgress) *pb.LoadProgress {
	return &pb.LoadProgress{Stage: p.Stage, DoneBytes: p.DoneBytes, TotalBytes: p.TotalBytes, Message: p.Message}
}

func progressFromProto(p *pb.LoadProgress) LoadProgress {
	return LoadProgress{Stage: p.GetStage(), DoneBytes: p.GetDoneBytes(), TotalBytes: p.GetTotalBytes(), Message: p.GetMessage()}
}

var stateToProtoMap = map[State]pb.State{
	StateStarting: pb.State_STATE_STARTING,
	StateIdle:     pb.State_STATE_IDLE,
	StateLoading:  pb.State_STATE_LOADING,
	StateReady:    pb.State_STATE_READY,
	StateError:    pb.State_STATE_ERROR,
}

func stateToProto(s State) pb.State { return stateToProtoMap[s] }

func stateFromProto(s pb.State) State {
	for k, v := range stateToProtoMap {
		if v == s {
			return k
		}
	}
	return StateError
}

func modelInfoToProto(m ModelInfo) *pb.ModelInfo {
	return &pb.ModelInfo{
		Family: m.Family, ModelDir: m.ModelDir, Device: m.Device, Dtype: m.DType,
		AdapterAspects: m.AdapterAspects, PredictorAspects: m.PredictorAspects,
		Parameters: m.Parameters, Details: maps.Clone(m.Details),
	}
}

func modelInfoFromProto(p *pb.ModelInfo) ModelInfo {
	return ModelInfo{
		Family: p.GetFamily(), ModelDir: p.GetModelDir(), Device: p.GetDevice(), DType: p.GetDtype(),
		AdapterAspects: p.GetAdapterAspects(), PredictorAspects: p.GetPredictorAspects(),
		Parameters: p.GetParameters(), Details: nonEmpty(p.GetDetails()),
	}
}

func statusToProto(s Status) *pb.StatusResponse {
	return &pb.StatusResponse{
		State:      stateToProto(s.State),
		Progress:   progressToProto(s.Progress),
		Memory:     &pb.Memory{RssBytes: s.Memory.RSSBytes, GpuBytes: s.Memory.GPUBytes, GpuTotalBytes: s.Memory.GPUTotalBytes},
		Model:      modelInfoToProto(s.Model),
		Error:      s.Error,
		QueueDepth: int32(s.QueueDepth),
		BusyMs:     s.Busy.Milliseconds(),
	}
}

func statusFromProto(p *pb.StatusResponse) Status {
	m := p.GetMemory()
	return Status{
		State:      stateFromProto(p.GetState()),
		Progress:   progressFromProto(p.GetProgress()),
		Memory:     Memory{RSSBytes: m.GetRssBytes(), GPUBytes: m.GetGpuBytes(), GPUTotalBytes: m.GetGpuTotalBytes()},
		Model:      modelInfoFromProto(p.GetModel()),
		Error:      p.GetError(),
		QueueDepth: int(p.GetQueueDepth()),
		Busy:       time.Duration(p.GetBusyMs()) * time.Millisecond,
	}
}

func optionsToProto(o ScoreOptions) *pb.ScoreOptions {
	p := &pb.ScoreOptions{
		Aspects:         o.Aspects,
		MaxNewTokens:    int32(o.MaxNewTokens),
		SkipDescription: o.SkipDescription,
		Extra:           maps.Clone(o.Extra),
	}
	if len(o.Prompts) > 0 {
		p.Prompts = make(map[string]*pb.AspectPrompt, len(o.Prompts))
		for k, v := range o.Prompts {
			p.Prompts[k] = &pb.AspectPrompt{Round1: v.Round1, Round2: v.Round2}
		}
	}
	return p
}

func optionsFromProto(p *pb.ScoreOptions) ScoreOptions {
	o := ScoreOptions{
		Aspects:         p.GetAspects(),
		MaxNewTokens:    int(p.GetMaxNewTokens()),
		SkipDescription: p.GetSkipDescription(),
		Extra:           nonEmpty(p.GetExtra()),
	}
	if len(p.GetPrompts()) > 0 {
		o.Prompts = make(map[string]AspectPrompt, len(p.GetPrompts()))
		for k, v := range p.GetPrompts() {
			o.Prompts[k] = AspectPrompt{Round1: v.GetRound1(), Round2: v.GetRound2()}
		}
	}
	return o
}

func scoreRequestToProto(r ScoreRequest) (*pb.ScoreRequest, error) {
	p := &pb.ScoreRequest{Prompt: r.Prompt, Options: optionsToProto(r.Options), Items: make([]*pb.ScoreItem, len(r.Items))}
	for i, it := range r.Items {
		if err := it.Validate(); err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		pi := &pb.ScoreItem{Prompt: it.Prompt}
		if it.Path != "" {
			pi.Image = &pb.ScoreItem_Path{Path: it.Path}
		} else {
			pi.Image = &pb.ScoreItem_Data{Data: it.Data}
		}
		p.Items[i] = pi
	}
	return p, nil
}

func scoreRequestFromProto(p *pb.ScoreRequest) ScoreRequest {
	r := ScoreRequest{Prompt: p.GetPrompt(), Options: optionsFromProto(p.GetOptions()), Items: make([]ScoreItem, len(p.GetItems()))}
	for i, it := range p.GetItems() {
		r.Items[i] = ScoreItem{Data: it.GetData(), Path: it.GetPath(), Prompt: it.GetPrompt()}
	}
	return r
}

func resultsToProto(rs []ItemResult) *pb.ScoreResponse {
	out := &pb.ScoreResponse{Results: make([]*pb.ItemResult, len(rs))}
	for i, r := range rs {
		pr := &pb.ItemResult{Index: int32(r.Index), Error: r.Error}
		if len(r.Aspects) > 0 {
			pr.Aspects = make(map[string]*pb.AspectResult, len(r.Aspects))
			for name, a := range r.Aspects {
				pa := &pb.AspectResult{Mos: a.MOS, Rating: a.Rating, WordProbs: maps.Clone(a.WordProbs), Description: a.Description, Source: a.Source}
				if len(a.Timings) > 0 {
					pa.TimingsNs = make(map[string]int64, len(a.Timings))
					for k, d := range a.Timings {
						pa.TimingsNs[k] = int64(d)
					}
				}
				pr.Aspects[name] = pa
			}
		}
		out.Results[i] = pr
	}
	return out
}

func resultsFromProto(p *pb.ScoreResponse) []ItemResult {
	out := make([]ItemResult, len(p.GetResults()))
	for i, pr := range p.GetResults() {
		r := ItemResult{Index: int(pr.GetIndex()), Error: pr.GetError()}
		if len(pr.GetAspects()) > 0 {
			r.Aspects = make(map[string]AspectResult, len(pr.GetAspects()))
			for name, pa := range pr.GetAspects() {
				a := AspectResult{MOS: pa.GetMos(), Rating: pa.GetRating(), WordProbs: nonEmpty(pa.GetWordProbs()), Description: pa.GetDescription(), Source: pa.GetSource()}
				if len(pa.GetTimingsNs()) > 0 {
					a.Timings = make(map[string]time.Duration, len(pa.GetTimingsNs()))
					for k, ns := range pa.GetTimingsNs() {
						a.Timings[k] = time.Duration(ns)
					}
				}
				r.Aspects[name] = a
			}
		}
		out[i] = r
	}
	return out
}

// nonEmpty returns m, or nil when m is empty, so that round trips of empty
// maps compare equal to the nil maps they started as.
func nonEmpty[M ~map[K]V, K comparable, V any](m M) M {
	if len(m) == 0 {
		return nil
	}
	return m
}
