// Package train is m3gate's training pipeline on gotch: LoRA fine-tuning of
// the MLLM on the two-round M3-AGIQA conversations (Finetune, `m3gate
// finetune`) and training of the xLSTM predictor on the MLLM's hidden
// states (TrainPredictor, `m3gate train-predictor`).
//
// Input is a conversations JSONL file (one image × aspect per line: image,
// prompt, aspect, split, round1, teacher_description, round2, rating_word,
// optional student_description and mos) and an image folder; MOS labels can
// come from an AGIQA-3K data.csv or an m3gate manifest (ReadMOS).
//
// Fine-tuning puts the loss on the assistant tokens of both turns only (the
// description and the rating word, each with its <end_of_utterance>),
// trains a PEFT LoRA adapter on the text model's attention projections with
// AdamW (moments kept in Go tensors so they can be checkpointed), a cosine
// schedule with linear warmup, gradient accumulation and global-norm
// clipping. Checkpoints (OUT/checkpoint-NNNNNN: adapter_config.json,
// adapter_model.safetensors, optimizer.safetensors, trainer_state.json,
// written last) come every --save-every steps and when the context is
// cancelled; the data order and dropout masks are functions of the seed and
// the micro-batch index, so --resume continues bit-for-bit.
//
// Predictor training builds the inputs once — the final normed hidden states
// of the three-message prefix (m3.ThreeMessages with the generation prompt,
// as the scorer builds it), teacher descriptions for training and the
// model's own greedy descriptions for validation, truncated to S positions —
// and caches them as safetensors keyed by model, adapter, record and
// settings. The predictor reads them through the W·lm_head shortcut and is
// trained with MSE on raw MOS and AdamW; the epoch with the best validation
// SRCC is kept in OUT/best.safetensors and OUT/train_state.safetensors holds
// the resumable state.
package train
