/*
 * asgi-pause: the sandbox ("pause") process of the local node's Pods.
 *
 * It holds the Pod's namespaces open and does nothing else: it blocks SIGINT, SIGTERM
 * and SIGCHLD and takes them one at a time with sigwaitinfo(2).  SIGCHLD reaps every
 * exited child (it is PID 1 when the Pod shares its process namespace); SIGINT or
 * SIGTERM ends it with status 0.  Blocked signals reach a namespace's PID 1 even
 * without a handler, so nothing runs in signal context.
 *
 * Built static (gcc -static) by hack/nodeimages.py into an image of one file.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "1.0"

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        puts("asgi-pause " VERSION);
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "usage: %s [--version]\n", argv[0]);
        return 2;
    }
    sigset_t wanted;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGINT);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &wanted, NULL) != 0) {
        perror("asgi-pause: sigprocmask");
        return 1;
    }
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&wanted, &info);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            perror("asgi-pause: sigwaitinfo");
            return 1;
        }
        if (sig == SIGCHLD) {
            while (waitpid(-1, NULL, WNOHANG) > 0) {
            }
            continue;
        }
        fprintf(stderr, "asgi-pause: signal %d, exiting\n", sig);
        return 0;
    }
}
