/* cli.h — `celeriac score`, the command line of the name scorer. */
#ifndef CELERIAC_SCORE_CLI_H
#define CELERIAC_SCORE_CLI_H

/* argv[0] is "score". Returns the process exit status. */
int cel_score_main(int argc, char **argv);

#endif
