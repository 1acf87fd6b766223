/* Table-driven command lines for the infer/ subcommands (see cli.h). */
#include "cli.h"

#include "autograd/device.h"
#include "autograd/error.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void dc_cli_help(const dc_cli *cli, FILE *f) {
    fprintf(f, "%s\n%s", cli->usage_line, cli->intro);
    for (size_t i = 0; i < cli->n_options; i++) {
        const dc_cli_option *o = &cli->options[i];
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        fprintf(f, "  %-28s %s", left, o->help);
        if (o->def)
            fprintf(f, " (default: %s)", o->def);
        else if (o->unset)
            fprintf(f, " (%s)", o->unset);
        fputc('\n', f);
    }
    fprintf(f, "  %-28s %s\n", "-h, --help", "show this help");
}

/* Parse `text` into the option's field; -1 after dc_fail for a bad value. */
static int store(void *opts, const dc_cli_option *o, const char *text) {
    void *field = (char *)opts + o->offset;
    if (o->type == DC_CLI_STRING) {
        *(const char **)field = text;
        return 0;
    }
    char *end;
    errno = 0;
    double v = o->type == DC_CLI_INT ? (double)strtoll(text, &end, 10) : strtod(text, &end);
    if (end == text || *end || errno || !isfinite(v))
        return dc_fail("--%s: '%s' is not %s", o->name, text, o->type == DC_CLI_INT ? "an integer" : "a number");
    if (v < o->lo || (o->lo_open && v == o->lo) || v > o->hi)
        return dc_fail("--%s: %s is outside %c%g, %g]", o->name, text, o->lo_open ? '(' : '[', o->lo, o->hi);
    if (o->type == DC_CLI_INT)
        *(int64_t *)field = strtoll(text, NULL, 10);
    else
        *(double *)field = v;
    return 0;
}

/* The row of "--name" (underscores may stand for dashes). */
static const dc_cli_option *find_option(const dc_cli *cli, const char *name, size_t len) {
    for (size_t i = 0; i < cli->n_options; i++) {
        const char *n = cli->options[i].name;
        size_t k = 0;
        while (k < len && n[k] && (name[k] == n[k] || (name[k] == '_' && n[k] == '-')))
            k++;
        if (k == len && !n[k])
            return &cli->options[i];
    }
    return NULL;
}

int dc_cli_usage_error(const dc_cli *cli, const char *fmt, const char *arg) {
    fprintf(stderr, "diffc: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s   (diffc %s --help for more)\n", cli->usage_line, cli->command);
    return DC_CLI_USAGE;
}

int dc_cli_parse(const dc_cli *cli, void *opts, int argc, char **argv) {
    for (size_t i = 0; i < cli->n_options; i++)
        if (cli->options[i].def && store(opts, &cli->options[i], cli->options[i].def))
            return -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return DC_CLI_HELP;
        if (strncmp(a, "--", 2)) {
            char msg[64];
            snprintf(msg, sizeof msg, "%s takes no positional argument ('%%s')", cli->command);
            return dc_cli_usage_error(cli, msg, a);
        }
        const char *eq = strchr(a + 2, '=');
        const dc_cli_option *o = find_option(cli, a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2));
        if (!o)
            return dc_cli_usage_error(cli, "unknown option '%s'", a);
        if (o->type == DC_CLI_FLAG) {
            if (eq)
                return dc_cli_usage_error(cli, "%s takes no value", a);
            *(bool *)((char *)opts + o->offset) = true;
            continue;
        }
        if (!eq && i + 1 >= argc)
            return dc_cli_usage_error(cli, "%s needs a value", a);
        if (store(opts, o, eq ? eq + 1 : argv[++i]))
            return -1;
    }
    return DC_CLI_PARSED;
}

int dc_cli_resolve_device(const char *device_name, const char *mixed_precision, int *device) {
    dc_math math;
    if (dc_device_resolve(device_name, device))
        return -1;
    if (dc_math_parse(mixed_precision, &math))
        return dc_fail_prefix("--mixed-precision");
    return dc_device_set_math(*device, math);
}
