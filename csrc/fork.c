/*
 * What open handles do in a child after fork().
 *
 * A child shares its parent's open file descriptions, and with them the
 * locks that say "this producer is alive" and "this consumer entry is in
 * use". If the child kept them, a parent that dies would leave the queue
 * locked, or its entry held, for as long as the child lives. So right after
 * fork(), in the child, every open handle gives up its lock descriptions
 * (the locks stay with the parent alone) and stops acting in the parent's
 * name: see in_child in producer.c and consumer.c.
 */
#include <pthread.h>

#include "ring_internal.h"

static struct shmq_fork_link *open_handles;
static pthread_mutex_t open_handles_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fork_hook_once = PTHREAD_ONCE_INIT;

static void before_fork(void) { pthread_mutex_lock(&open_handles_lock); }
static void after_fork_in_parent(void) { pthread_mutex_unlock(&open_handles_lock); }

static void after_fork_in_child(void)
{
    for (struct shmq_fork_link *link = open_handles; link != NULL; link = link->next)
        link->in_child(link);
    pthread_mutex_unlock(&open_handles_lock);
}

static void install_fork_hook(void)
{
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

void shmq_fork_track(struct shmq_fork_link *link)
{
    pthread_once(&fork_hook_once, install_fork_hook);
    pthread_mutex_lock(&open_handles_lock);
    link->next = open_handles;
    open_handles = link;
    pthread_mutex_unlock(&open_handles_lock);
}

void shmq_fork_guard(int enter)
{
    pthread_once(&fork_hook_once, install_fork_hook);
    if (enter)
        pthread_mutex_lock(&open_handles_lock);
    else
        pthread_mutex_unlock(&open_handles_lock);
}

void shmq_fork_untrack(struct shmq_fork_link *link)
{
    pthread_mutex_lock(&open_handles_lock);
    for (struct shmq_fork_link **at = &open_handles; *at != NULL; at = &(*at)->next) {
        if (*at == link) {
            *at = link->next;
            break;
        }
    }
    pthread_mutex_unlock(&open_handles_lock);
}
