/* Entry points of the subcommands that use trained weights and data. Each
 * returns the process exit status: 0 done, 1 user error (message printed), 2 usage. */
#ifndef DC_INFER_COMMANDS_H
#define DC_INFER_COMMANDS_H

int dc_cmd_anomaly(int argc, char **argv);
int dc_cmd_info(int argc, char **argv);
int dc_cmd_sample(int argc, char **argv);
int dc_cmd_augment(int argc, char **argv);
int dc_cmd_caption(int argc, char **argv);

#endif
