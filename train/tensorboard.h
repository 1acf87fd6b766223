/*
 * TensorBoard event files: scalars (loss, learning rate, ...) and images
 * (sample grids), readable by TensorBoard's own reader.
 *
 * An event file is a sequence of TFRecords, each one serialised Event
 * protobuf:
 *
 *   uint64 length (LE) | uint32 masked CRC-32C of those 8 bytes |
 *   data[length]       | uint32 masked CRC-32C of the data
 *
 * with mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8. The first Event names
 * the format (file_version "brain.Event:2"); then each scalar is
 * Event{wall_time, step, summary{value{tag, simple_value}}} and each image
 * Event{..., summary{value{tag, image{height, width, colorspace,
 * encoded_image_string (PNG)}}}}. Debian has no C library for either the
 * framing or these few protobuf fields, so both are written here.
 */
#ifndef DC_TRAIN_TENSORBOARD_H
#define DC_TRAIN_TENSORBOARD_H

#include "data/image.h"

#include <stddef.h>
#include <stdint.h>

typedef struct dc_tb_writer dc_tb_writer;

/* Create `dir` if needed and start a new event file in it,
 * events.out.tfevents.<unix time>.<hostname>.<pid> (the pid keeps two runs
 * started in the same second apart; ".1", ".2", ... follow when one process
 * opens several in one second). start_step is the step the run starts
 * after: 0 for a new run, the checkpoint's step for a resumed one, when a
 * SessionLog START event at start_step + 1 follows the version record: it
 * tells TensorBoard to drop what an interrupted run logged after the
 * checkpoint, so the curves do not fold back. */
int dc_tb_open(dc_tb_writer **w, const char *dir, int64_t start_step);
/* Close; -1 when the last buffered bytes cannot be written. NULL-safe. */
int dc_tb_close(dc_tb_writer *w);
/* The event file's path. */
const char *dc_tb_path(const dc_tb_writer *w);

/* One scalar or one image (8-bit gray or RGB, stored as PNG) at `step`,
 * stamped with the current time, flushed so TensorBoard sees it at once.
 * After a failed write every later one fails too (a partial record would
 * make the rest of the file unreadable). */
int dc_tb_scalar(dc_tb_writer *w, const char *tag, int64_t step, double value);
int dc_tb_image(dc_tb_writer *w, const char *tag, int64_t step, const dc_image *img);

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) continued from
 * `crc` (0 to start): crc32c("123456789") = 0xE3069283. zlib's crc32 uses
 * the other polynomial. */
uint32_t dc_crc32c(uint32_t crc, const void *data, size_t n);

#endif
