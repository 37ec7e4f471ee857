// Package m3 is the M3-AGIQA scorer: for each aspect of an image it runs the
// two-round conversation (describe, then rate) on the local MLLM with the
// aspect's LoRA adapter, reads the rating-word probabilities at the answer
// position, and feeds the three-message prefix to the aspect's xLSTM
// predictor for a mean opinion score.
package m3

import (
	"fmt"
	"strings"

	"github.com/m3gate/m3gate/sidecar/mllm"
)

// PromptPlaceholder is the token a round-1 template carries where the
// generation prompt goes.
const PromptPlaceholder = "{prompt}"

// Prompts are one aspect's two questions. Round1 is a template holding
// PromptPlaceholder (or already filled in); Round2 is the rating question.
type Prompts struct {
	Round1 string
	Round2 string
}

// Validate reports a prompt pair that cannot drive a conversation.
func (p Prompts) Validate() error {
	if strings.TrimSpace(p.Round1) == "" {
		return fmt.Errorf("round-1 question is empty")
	}
	if strings.TrimSpace(p.Round2) == "" {
		return fmt.Errorf("round-2 question is empty")
	}
	return nil
}

// RoundOneText fills the generation prompt into the round-1 template.
func (p Prompts) RoundOneText(genPrompt string) string {
	return strings.ReplaceAll(p.Round1, PromptPlaceholder, genPrompt)
}

// RoundOne is the first user turn: the image and the round-1 question.
func RoundOne(p Prompts, genPrompt string) []mllm.Message {
	return []mllm.Message{mllm.UserMessage(p.RoundOneText(genPrompt), true)}
}

// ThreeMessages is the predictor's input conversation: round 1 with the
// image, the assistant's description, and the round-2 question.
func ThreeMessages(p Prompts, genPrompt, description string) []mllm.Message {
	return append(RoundOne(p, genPrompt),
		mllm.AssistantMessage(description),
		mllm.UserMessage(p.Round2, false))
}

// FullConversation is the whole two-round conversation with the rating
// word as the last assistant turn, as LoRA fine-tuning sees it.
func FullConversation(p Prompts, genPrompt, description, rating string) []mllm.Message {
	return append(ThreeMessages(p, genPrompt, description), mllm.AssistantMessage(rating))
}
