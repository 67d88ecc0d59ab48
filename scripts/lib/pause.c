/*
 * pause: the pod sandbox's init process for gpuops.cluster's air-gap image
 * registry.k8s.io/pause (scripts/build/cluster-images.sh builds it with gcc -static).
 * Same behaviour as Kubernetes' build/pause/linux/pause.c, written here: hold the pod's
 * namespaces, sleep until SIGINT/SIGTERM (exit 0), reap every child re-parented to it
 * (PID namespace sharing), `-v` prints the version.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PAUSE_VERSION
#define PAUSE_VERSION "unknown"
#endif

static void on_stop(int signo)
{
	(void)signo;
	_exit(0);
}

static void on_child(int signo)
{
	int saved = errno;

	(void)signo;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

static int handle(int signo, void (*fn)(int), int flags)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fn;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	return sigaction(signo, &sa, NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		printf("pause.c %s (gpuops.cluster)\n", PAUSE_VERSION);
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "Warning: pause should be the first process\n");
	if (handle(SIGINT, on_stop, 0) < 0 || handle(SIGTERM, on_stop, 0) < 0)
		return 1;
	if (handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) < 0)
		return 2;
	for (;;)
		pause();
	fprintf(stderr, "Error: infinite loop terminated\n");
	return 42;
}
