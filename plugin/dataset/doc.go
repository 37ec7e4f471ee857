// Package dataset reads the image-quality datasets M3-AGIQA is trained and
// evaluated on, converts them into one manifest format of m3gate's own, and
// holds the per-aspect conversation prompts (prompts.json, embedded) and the
// conversations format of the reference's distilled training data.
//
// # Readers
//
// Supported source formats (Format values):
//
//   - agiqa-3k: data.csv with header name, prompt, adj1, adj2, style,
//     mos_quality, std_quality, mos_align, std_align and an optional split
//     column. MOS on 0–5; mos_align becomes the "correspondence" aspect.
//   - aigciqa2023: the label CSV with an unnamed index column, name, prompt,
//     style, class, quality_mos, authenticity_mos, correspondence_mos and the
//     three *_std columns. MOS on 0–100, scaled to 0–5 (scale recorded). The
//     label file does not name the generators; the images come in six
//     consecutive blocks of 400 (100 prompts × 4 images), one per generator,
//     so the source is recorded as "block-K" with K = index / 400.
//   - agiqa-1k: CSV with header Image, Score (quality MOS on 0–5). The label
//     file has no prompts, so prompt is empty.
//   - aigiqa-20k: info_train.csv (name, prompt, mos; no header) and
//     info_val.csv (name, prompt; no header, no MOS). MOS on 0–5. The split
//     is taken from the file name (train, val, test) unless set explicitly.
//   - conversations: the reference's conversations JSONL (one record per
//     image × aspect with round1, teacher_description, round2, rating_word),
//     merged into one manifest record per image carrying rating words but no
//     MOS.
//
// Every reader reports row-level problems (unparsable rows, bad numbers,
// MOS out of the source's range, duplicate images, missing images) as
// Problem values with file and line; rows with problems are left out of the
// records and listed in the report, never silently dropped.
//
// # Manifest format
//
// A manifest is a JSONL file: one JSON object per line, one line per image.
// Blank lines are ignored; an unknown field makes the line a problem (it
// catches typos such as "mos_quality"). Fields:
//
//	image         string  path of the image file; a relative path is relative
//	                      to the directory holding the manifest (required).
//	                      data convert writes a relative path when the images
//	                      lie under the manifest's folder, else an absolute one
//	name          string  the image's name in the source dataset
//	prompt        string  the text prompt the image was generated from
//	mos           object  aspect → mean opinion score on 0–5, for aspects
//	                      "quality", "correspondence", "authenticity"; absent
//	                      when the source has no scores (e.g. AIGIQA-20K val)
//	std           object  aspect → standard deviation of the opinion scores,
//	                      on the same 0–5 scale (optional)
//	rating_words  object  aspect → rating word (bad … excellent), when the
//	                      source has words rather than scores (optional)
//	split         string  "train", "val", "test" or empty when unassigned
//	source        string  the generator (e.g. "midjourney", "SDXL") when known
//	dataset       string  the source format, e.g. "agiqa-3k"
//	scale         object  {"min":0,"max":100}: the original MOS scale; the raw
//	                      score is min + mos·(max−min)/5
//	style         string  dataset-specific style tag (optional)
//	origin        string  "file:line" the record came from (optional)
//
// Example line:
//
//	{"image":"images/AttnGAN_normal_000.jpg","name":"AttnGAN_normal_000.jpg","prompt":"statue of a man","mos":{"correspondence":0.40889324,"quality":0.965602553},"std":{"correspondence":0.615607722,"quality":0.223270101},"split":"train","source":"AttnGAN","dataset":"agiqa-3k","scale":{"min":0,"max":5},"origin":"data.csv:2"}
package dataset
