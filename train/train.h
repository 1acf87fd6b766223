/* The `diffc train` subcommand. */
#ifndef DC_TRAIN_TRAIN_H
#define DC_TRAIN_TRAIN_H

/* Returns the exit status: 0 done, 1 error (message printed), 2 usage,
 * 128 + signal after a checkpoint written on SIGINT/SIGTERM. */
int dc_cmd_train(int argc, char **argv);

#endif
