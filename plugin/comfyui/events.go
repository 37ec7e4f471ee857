package comfyui

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// Event is one message from the server's websocket, decoded: one of the
// *Event types of this package, or *UnknownEvent / *UnknownBinary for types
// this package does not know. Connection changes are reported as
// *Disconnected and *Reconnected.
type Event interface {
	// EventType is the message type ("status", "executing", …; binary
	// frames report "binary:N").
	EventType() string
}

// PromptEvent is implemented by events that belong to one prompt.
type PromptEvent interface {
	Event
	// Prompt returns the prompt id the event belongs to ("" if the server
	// did not say).
	Prompt() string
}

// Message type names sent by the server.
const (
	TypeStatus               = "status"
	TypeExecutionStart       = "execution_start"
	TypeExecutionCached      = "execution_cached"
	TypeExecuting            = "executing"
	TypeProgress             = "progress"
	TypeProgressState        = "progress_state"
	TypeExecuted             = "executed"
	TypeExecutionSuccess     = "execution_success"
	TypeExecutionError       = "execution_error"
	TypeExecutionInterrupted = "execution_interrupted"
	TypeFeatureFlags         = "feature_flags"
)

// Binary frame event numbers (first 4 bytes, big endian).
const (
	BinaryPreviewImage        = 1
	BinaryUnencodedPreview    = 2
	BinaryText                = 3
	BinaryPreviewWithMetadata = 4
	PreviewFormatJPEG         = 1
	PreviewFormatPNG          = 2
)

// StatusEvent is "status": the queue length, broadcast to every socket.
// SID is set only in the first message after connecting.
type StatusEvent struct {
	Status struct {
		ExecInfo struct {
			QueueRemaining int `json:"queue_remaining"`
		} `json:"exec_info"`
	} `json:"status"`
	SID string `json:"sid,omitempty"`
}

// EventType implements Event.
func (*StatusEvent) EventType() string { return TypeStatus }

// QueueRemaining returns the number of prompts running or pending.
func (e *StatusEvent) QueueRemaining() int { return e.Status.ExecInfo.QueueRemaining }

// ExecutionStartEvent is "execution_start".
type ExecutionStartEvent struct {
	PromptID  string `json:"prompt_id"`
	Timestamp int64  `json:"timestamp"`
}

// EventType implements Event.
func (*ExecutionStartEvent) EventType() string { return TypeExecutionStart }

// Prompt implements PromptEvent.
func (e *ExecutionStartEvent) Prompt() string { return e.PromptID }

// ExecutionCachedEvent is "execution_cached": the nodes whose outputs were
// reused.
type ExecutionCachedEvent struct {
	Nodes     []string `json:"nodes"`
	PromptID  string   `json:"prompt_id"`
	Timestamp int64    `json:"timestamp"`
}

// EventType implements Event.
func (*ExecutionCachedEvent) EventType() string { return TypeExecutionCached }

// Prompt implements PromptEvent.
func (e *ExecutionCachedEvent) Prompt() string { return e.PromptID }

// ExecutingEvent is "executing". Node is nil when the prompt has finished
// (the only reliable terminal signal). On reconnection during a run the
// server may send it with a node and no prompt id.
type ExecutingEvent struct {
	Node        *string `json:"node"`
	DisplayNode string  `json:"display_node,omitempty"`
	PromptID    string  `json:"prompt_id,omitempty"`
}

// EventType implements Event.
func (*ExecutingEvent) EventType() string { return TypeExecuting }

// Prompt implements PromptEvent.
func (e *ExecutingEvent) Prompt() string { return e.PromptID }

// Done reports whether this is the end-of-prompt marker (node null).
func (e *ExecutingEvent) Done() bool { return e.Node == nil }

// ProgressEvent is "progress": step value of max for a node.
type ProgressEvent struct {
	Value    float64 `json:"value"`
	Max      float64 `json:"max"`
	PromptID string  `json:"prompt_id"`
	Node     string  `json:"node"`
}

// EventType implements Event.
func (*ProgressEvent) EventType() string { return TypeProgress }

// Prompt implements PromptEvent.
func (e *ProgressEvent) Prompt() string { return e.PromptID }

// NodeProgress is one node's entry in "progress_state".
type NodeProgress struct {
	Value         float64 `json:"value"`
	Max           float64 `json:"max"`
	State         string  `json:"state"`
	NodeID        string  `json:"node_id"`
	PromptID      string  `json:"prompt_id"`
	DisplayNodeID string  `json:"display_node_id"`
	ParentNodeID  *string `json:"parent_node_id"`
	RealNodeID    string  `json:"real_node_id"`
}

// ProgressStateEvent is "progress_state": the state of every node started
// so far.
type ProgressStateEvent struct {
	PromptID string                  `json:"prompt_id"`
	Nodes    map[string]NodeProgress `json:"nodes"`
}

// EventType implements Event.
func (*ProgressStateEvent) EventType() string { return TypeProgressState }

// Prompt implements PromptEvent.
func (e *ProgressStateEvent) Prompt() string { return e.PromptID }

// ExecutedEvent is "executed": a node's ui output (images etc.).
type ExecutedEvent struct {
	Node        string     `json:"node"`
	DisplayNode string     `json:"display_node"`
	Output      NodeOutput `json:"output"`
	PromptID    string     `json:"prompt_id"`
}

// EventType implements Event.
func (*ExecutedEvent) EventType() string { return TypeExecuted }

// Prompt implements PromptEvent.
func (e *ExecutedEvent) Prompt() string { return e.PromptID }

// ExecutionSuccessEvent is "execution_success".
type ExecutionSuccessEvent struct {
	PromptID  string `json:"prompt_id"`
	Timestamp int64  `json:"timestamp"`
}

// EventType implements Event.
func (*ExecutionSuccessEvent) EventType() string { return TypeExecutionSuccess }

// Prompt implements PromptEvent.
func (e *ExecutionSuccessEvent) Prompt() string { return e.PromptID }

// ExecutionErrorEvent is "execution_error" (a node raised, or a deliberate
// ExecutionBlocker with a message).
type ExecutionErrorEvent struct {
	PromptID         string          `json:"prompt_id"`
	NodeID           string          `json:"node_id"`
	NodeType         string          `json:"node_type"`
	Executed         []string        `json:"executed"`
	ExceptionMessage string          `json:"exception_message"`
	ExceptionType    string          `json:"exception_type"`
	Traceback        []string        `json:"traceback"`
	CurrentInputs    json.RawMessage `json:"current_inputs,omitempty"`
	CurrentOutputs   json.RawMessage `json:"current_outputs,omitempty"`
	Timestamp        int64           `json:"timestamp"`
}

// EventType implements Event.
func (*ExecutionErrorEvent) EventType() string { return TypeExecutionError }

// Prompt implements PromptEvent.
func (e *ExecutionErrorEvent) Prompt() string { return e.PromptID }

// ExecutionInterruptedEvent is "execution_interrupted".
type ExecutionInterruptedEvent struct {
	PromptID  string   `json:"prompt_id"`
	NodeID    string   `json:"node_id"`
	NodeType  string   `json:"node_type"`
	Executed  []string `json:"executed"`
	Timestamp int64    `json:"timestamp"`
}

// EventType implements Event.
func (*ExecutionInterruptedEvent) EventType() string { return TypeExecutionInterrupted }

// Prompt implements PromptEvent.
func (e *ExecutionInterruptedEvent) Prompt() string { return e.PromptID }

// FeatureFlagsEvent is "feature_flags", sent by the client to opt into
// features and answered by the server with its own flags.
type FeatureFlagsEvent struct {
	SupportsPreviewMetadata bool  `json:"supports_preview_metadata"`
	MaxUploadSize           int64 `json:"max_upload_size,omitempty"`
}

// EventType implements Event.
func (*FeatureFlagsEvent) EventType() string { return TypeFeatureFlags }

// UnknownEvent is a JSON message of a type this package does not know
// (custom node events such as "quality_probe.score"), passed through raw.
type UnknownEvent struct {
	Type string
	Data json.RawMessage
}

// EventType implements Event.
func (e *UnknownEvent) EventType() string { return e.Type }

// PreviewImageEvent is binary event 1: a preview image (JPEG or PNG bytes).
type PreviewImageEvent struct {
	Format int // PreviewFormatJPEG or PreviewFormatPNG
	Data   []byte
}

// EventType implements Event.
func (*PreviewImageEvent) EventType() string { return "binary:1" }

// TextEvent is binary event 3: text attached to a node.
type TextEvent struct {
	NodeID string
	Text   string
}

// EventType implements Event.
func (*TextEvent) EventType() string { return "binary:3" }

// PreviewMetadata is the JSON header of binary event 4.
type PreviewMetadata struct {
	NodeID        string  `json:"node_id"`
	PromptID      string  `json:"prompt_id"`
	DisplayNodeID string  `json:"display_node_id"`
	ParentNodeID  *string `json:"parent_node_id"`
	RealNodeID    string  `json:"real_node_id"`
	ImageType     string  `json:"image_type"`
}

// PreviewWithMetadataEvent is binary event 4: a preview image with the node
// and prompt it belongs to (sent only to clients that announced
// supports_preview_metadata).
type PreviewWithMetadataEvent struct {
	Metadata PreviewMetadata
	Data     []byte
}

// EventType implements Event.
func (*PreviewWithMetadataEvent) EventType() string { return "binary:4" }

// Prompt implements PromptEvent.
func (e *PreviewWithMetadataEvent) Prompt() string { return e.Metadata.PromptID }

// UnknownBinary is a binary frame with an event number this package does
// not decode.
type UnknownBinary struct {
	Event uint32
	Data  []byte
}

// EventType implements Event.
func (e *UnknownBinary) EventType() string { return fmt.Sprintf("binary:%d", e.Event) }

// Disconnected is emitted to subscribers when the websocket drops.
type Disconnected struct{ Err error }

// EventType implements Event.
func (*Disconnected) EventType() string { return "m3gate.disconnected" }

// Reconnected is emitted to subscribers when the websocket is back (same
// client id). Per-prompt events sent while it was down are lost: check
// /history for prompts in flight.
type Reconnected struct{ Attempts int }

// EventType implements Event.
func (*Reconnected) EventType() string { return "m3gate.reconnected" }

// envelope is the {type, data} JSON message.
type envelope struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// DecodeMessage decodes one JSON websocket message into its typed event.
func DecodeMessage(b []byte) (Event, error) {
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("decode message: %w", err)
	}
	if env.Type == "" {
		return nil, errors.New("decode message: no type")
	}
	var ev Event
	switch env.Type {
	case TypeStatus:
		ev = &StatusEvent{}
	case TypeExecutionStart:
		ev = &ExecutionStartEvent{}
	case TypeExecutionCached:
		ev = &ExecutionCachedEvent{}
	case TypeExecuting:
		ev = &ExecutingEvent{}
	case TypeProgress:
		ev = &ProgressEvent{}
	case TypeProgressState:
		ev = &ProgressStateEvent{}
	case TypeExecuted:
		ev = &ExecutedEvent{}
	case TypeExecutionSuccess:
		ev = &ExecutionSuccessEvent{}
	case TypeExecutionError:
		ev = &ExecutionErrorEvent{}
	case TypeExecutionInterrupted:
		ev = &ExecutionInterruptedEvent{}
	case TypeFeatureFlags:
		ev = &FeatureFlagsEvent{}
	default:
		return &UnknownEvent{Type: env.Type, Data: env.Data}, nil
	}
	if len(env.Data) == 0 || string(env.Data) == "null" {
		return nil, fmt.Errorf("decode %s: no data", env.Type)
	}
	dec := json.NewDecoder(bytes.NewReader(env.Data))
	dec.UseNumber()
	if err := dec.Decode(ev); err != nil {
		return nil, fmt.Errorf("decode %s: %w", env.Type, err)
	}
	return ev, nil
}

// EncodeMessage encodes a {type, data} JSON message.
func EncodeMessage(typ string, data any) ([]byte, error) {
	d, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", typ, err)
	}
	return json.Marshal(envelope{Type: typ, Data: d})
}

// DecodeBinary decodes one binary websocket frame.
func DecodeBinary(b []byte) (Event, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("decode binary frame: %d bytes, want at least 4", len(b))
	}
	ev := binary.BigEndian.Uint32(b)
	body := b[4:]
	switch ev {
	case BinaryPreviewImage:
		if len(body) < 4 {
			return nil, fmt.Errorf("decode preview frame: %d bytes, want a 4-byte format", len(body))
		}
		f := binary.BigEndian.Uint32(body)
		if f != PreviewFormatJPEG && f != PreviewFormatPNG {
			return nil, fmt.Errorf("decode preview frame: unknown image format %d", f)
		}
		return &PreviewImageEvent{Format: int(f), Data: body[4:]}, nil
	case BinaryText:
		if len(body) < 4 {
			return nil, fmt.Errorf("decode text frame: %d bytes, want a 4-byte length", len(body))
		}
		n := binary.BigEndian.Uint32(body)
		if uint64(n) > uint64(len(body)-4) {
			return nil, fmt.Errorf("decode text frame: node id length %d exceeds frame", n)
		}
		return &TextEvent{NodeID: string(body[4 : 4+n]), Text: string(body[4+n:])}, nil
	case BinaryPreviewWithMetadata:
		if len(body) < 4 {
			return nil, fmt.Errorf("decode preview-metadata frame: %d bytes, want a 4-byte length", len(body))
		}
		n := binary.BigEndian.Uint32(body)
		if uint64(n) > uint64(len(body)-4) {
			return nil, fmt.Errorf("decode preview-metadata frame: metadata length %d exceeds frame", n)
		}
		e := &PreviewWithMetadataEvent{Data: body[4+n:]}
		if err := json.Unmarshal(body[4:4+n], &e.Metadata); err != nil {
			return nil, fmt.Errorf("decode preview-metadata frame: %w", err)
		}
		return e, nil
	}
	return &UnknownBinary{Event: ev, Data: body}, nil
}

// EncodePreviewFrame builds binary event 1.
func EncodePreviewFrame(format int, img []byte) []byte {
	b := make([]byte, 8, 8+len(img))
	binary.BigEndian.PutUint32(b, BinaryPreviewImage)
	binary.BigEndian.PutUint32(b[4:], uint32(format))
	return append(b, img...)
}

// EncodeTextFrame builds binary event 3.
func EncodeTextFrame(nodeID, text string) []byte {
	b := make([]byte, 8, 8+len(nodeID)+len(text))
	binary.BigEndian.PutUint32(b, BinaryText)
	binary.BigEndian.PutUint32(b[4:], uint32(len(nodeID)))
	b = append(b, nodeID...)
	return append(b, text...)
}

// EncodePreviewMetadataFrame builds binary event 4.
func EncodePreviewMetadataFrame(md PreviewMetadata, img []byte) ([]byte, error) {
	j, err := json.Marshal(md)
	if err != nil {
		return nil, fmt.Errorf("encode preview metadata: %w", err)
	}
	b := make([]byte, 8, 8+len(j)+len(img))
	binary.BigEndian.PutUint32(b, BinaryPreviewWithMetadata)
	binary.BigEndian.PutUint32(b[4:], uint32(len(j)))
	b = append(b, j...)
	return append(b, img...), nil
}
