/* diffc: train diffusion models on your own images and put them to work.
 * main() only picks the subcommand; each one lives with its module. */
#include "autograd/device.h"
#include "infer/commands.h"
#include "train/caption.h"
#include "train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
} command;

static const command commands[] = {
    {"train", dc_cmd_train, "train --config FILE [options]  train or fine-tune a UNet"},
    {"sample", dc_cmd_sample, "sample --model DIR [options]   generate images with a trained model"},
    {"augment", dc_cmd_augment, "augment --model DIR [options]  synthetic training data from a model and a dataset"},
    {"anomaly", dc_cmd_anomaly, "anomaly --model DIR [options]  score images for anomalies by reconstruction"},
    {"caption", dc_cmd_caption, "caption --model DIR [options]  BLIP captions for image folders and files"},
    {"train-caption", dc_cmd_train_caption, "train-caption --model DIR [options]  fine-tune a BLIP captioner on captioned images"},
    {"info", dc_cmd_info, "info FILE|DIR                  what a weight file, checkpoint or dataset holds"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: diffc COMMAND [options]     (diffc COMMAND --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %s\n", commands[i].usage);
    fprintf(f, "\nCPU kernels: %s (DC_CPU_ISA=avx2|baseline runs slower ones)\n", dc_device_cpu_kernels());
    const char *waits = getenv("OMP_WAIT_POLICY"), *spins = getenv("GOMP_SPINCOUNT");
    fprintf(f, "OpenMP waits: %s, spin count %s (OMP_WAIT_POLICY, GOMP_SPINCOUNT)\n",
            waits ? waits : "libgomp's default", spins ? spins : "libgomp's default");
}

/* OpenMP threads that spin at a barrier while the machine is busy keep the
 * one thread that holds the work off its core: on 2 loaded cores a training
 * step took 3x as long as with sleeping waits. Sleeping at once costs the
 * wake-up between the many short parallel regions of a step (fashion-mnist
 * training on 2 idle cores: 180 img/s passive, 190 spinning); a short spin
 * first gets both (196 idle, and under load as passive within the noise).
 * libgomp reads its variables once, when it loads, so unless the user chose
 * either, diffc starts itself again with them set (if that fails it runs on
 * as it is). */
static void wait_passively(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT"))
        return;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    setenv("GOMP_SPINCOUNT", "10000", 1);
    execv("/proc/self/exe", argv);
}

int main(int argc, char **argv) {
    wait_passively(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "diffc: error: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
