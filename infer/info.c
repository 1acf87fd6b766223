/* `diffc info FILE|DIR`: what a weight file or checkpoint holds. */
#include "commands.h"

#include <stdio.h>

int dc_cmd_info(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: diffc info FILE|DIR\n");
        return 2;
    }
    fprintf(stderr, "diffc: error: %s: cannot read weight files yet\n", argv[1]);
    return 1;
}
