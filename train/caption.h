/*
 * `diffc train-caption`: fine-tuning a BLIP captioner (transformers'
 * BlipForConditionalGeneration) on a folder of images whose metadata.jsonl
 * gives their captions, with what `diffc train` is built from (options.h,
 * checkpoint.h, dist.h, metrics.h, run_dir.h, signals.h, memory.h, the data
 * loader, AdamW, EMA and the learning-rate schedules of autograd/optim.h).
 *
 * The loss is transformers' (BlipTextLMHeadModel with labels): each
 * caption is fed as [DEC] (bos), the prompt's tokens, the caption's, [SEP],
 * padded to --max-length; the labels are those ids with the padding, [DEC]
 * and the prompt set to -100, and position i's logits are scored against
 * label i + 1 by a cross-entropy that leaves -100 out and smooths the
 * labels by --label-smoothing (unset: text_config's label_smoothing, which
 * transformers' BlipTextLMHeadModel uses), averaged over the tokens kept.
 */
#ifndef DC_TRAIN_CAPTION_H
#define DC_TRAIN_CAPTION_H

#include "data/text/wordpiece.h"
#include "models/blip.h"

#include <stdbool.h>
#include <stdint.h>

/* The ignore index of the labels, as PyTorch's. */
#define DC_CAPTION_IGNORE (-100)

/* One training caption: ids[max_length] = bos, prompt[n_prompt], the
 * caption's tokens (cut to fit), sep, then pad; labels[max_length] = the ids
 * with bos, the prompt and the padding set to DC_CAPTION_IGNORE. max_length
 * must leave room for one caption token (n_prompt + 3). */
int dc_caption_tokens(const dc_wordpiece *tok, const dc_blip_text_config *t, const int32_t *prompt,
                      int64_t n_prompt, const char *caption, int64_t max_length, int32_t *ids, int32_t *labels);

/* The mean LM loss [1] of n captions of t tokens (ids, labels [n, t] on the
 * host, as dc_caption_tokens makes them) on the images pixels [n, S, S, 3]
 * (normalised, ctx's device). With freeze_vision the vision encoder runs
 * without the tape. NULL on failure. */
dc_tensor *dc_caption_loss(dc_ctx *ctx, const dc_blip *m, dc_tensor *pixels, const int32_t *ids,
                           const int32_t *labels, int64_t n, int64_t t, float smoothing, bool freeze_vision);

/* The subcommand: 0 done, 1 error (message printed), 2 usage, 128 + signal
 * after a checkpoint written on SIGINT/SIGTERM. */
int dc_cmd_train_caption(int argc, char **argv);

#endif
