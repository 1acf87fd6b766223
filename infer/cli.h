/*
 * The command lines of the infer/ subcommands (sample, augment, ...): one
 * table of long options per command, parsed into the command's options
 * struct, and its --help generated from the same table. Values are checked
 * as they are stored (integers, numbers and their ranges), so a default obeys
 * the same rules as a user's value. `--name value` and `--name=value` both
 * work; underscores may stand for dashes, as diffusers spells the options.
 */
#ifndef DC_INFER_CLI_H
#define DC_INFER_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum { DC_CLI_STRING, DC_CLI_INT, DC_CLI_FLOAT, DC_CLI_FLAG } dc_cli_type;

/* One option; its field in the options struct is a const char * (STRING),
 * int64_t (INT), double (FLOAT) or bool (FLAG). */
typedef struct dc_cli_option {
    const char *name; /* the long option without its dashes */
    dc_cli_type type;
    size_t offset;       /* of its field in the options struct */
    const char *metavar; /* NULL for a flag */
    const char *def;     /* the default as the command line would give it; NULL: unset */
    const char *unset;   /* for --help when def is NULL: "required", "default: ..." */
    double lo, hi;       /* INT and FLOAT: the range; lo itself excluded when lo_open */
    bool lo_open;
    const char *help;
} dc_cli_option;

typedef struct dc_cli {
    const char *command;    /* "sample" */
    const char *usage_line; /* "usage: diffc sample --model DIR ..." */
    const char *intro;      /* --help's text between the usage line and the options */
    const dc_cli_option *options;
    size_t n_options;
} dc_cli;

/* Rows shared by the commands that run a model; FIELD(f) is the including
 * file's offsetof into its options struct. DC_CLI_DEVICE_ROW's argument is
 * appended to its help ("" for none). */
#define DC_CLI_NO_EMA_ROW \
    {"no-ema", DC_CLI_FLAG, FIELD(no_ema), NULL, NULL, NULL, 0, 0, false, "use unet/ even when unet_ema/ exists"}
#define DC_CLI_DEVICE_ROW(more)                                                    \
    {"device", DC_CLI_STRING, FIELD(device), "NAME", "auto", NULL, 0, 0, false,    \
     "auto (a GPU when there is one), cpu, cuda or cuda:N" more}
#define DC_CLI_MIXED_PRECISION_ROW                                                                 \
    {"mixed-precision", DC_CLI_STRING, FIELD(mixed_precision), "no|bf16", "no", NULL, 0, 0, false, \
     "on a GPU: bf16 matrix products (no: f32 with TF32 tensor cores)"}

enum { DC_CLI_PARSED = 0, DC_CLI_HELP = 1, DC_CLI_USAGE = 2 };

/* Fill `opts` (zeroed, then the defaults) from argv[1..argc): DC_CLI_PARSED,
 * DC_CLI_HELP (-h or --help), DC_CLI_USAGE (message printed: an unknown
 * option, a missing value, a positional word), or -1 after dc_fail for a bad
 * value. */
int dc_cli_parse(const dc_cli *cli, void *opts, int argc, char **argv);
/* Print "diffc: error: <fmt with arg>" and the usage line; DC_CLI_USAGE. */
int dc_cli_usage_error(const dc_cli *cli, const char *fmt, const char *arg);
void dc_cli_help(const dc_cli *cli, FILE *f);

/* --device and --mixed-precision (autograd/device.h): the device, with its
 * arithmetic set. */
int dc_cli_resolve_device(const char *device_name, const char *mixed_precision, int *device);

#endif
