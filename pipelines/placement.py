"""Where and how tasks run on Kubernetes: GPU node pool for training, Secret, retries, caching."""

from kfp import kubernetes

from longtail.workflow.config import ClusterConfig


def common(task, cluster: ClusterConfig, *, cache: bool = True):
    """Every task: S3 credentials from the Secret as env vars, retries, caching; CPU/memory requests."""
    task.set_retry(num_retries=cluster.retries)
    task.set_caching_options(cluster.caching and cache)
    if cluster.s3_secret:
        kubernetes.use_secret_as_env(task, secret_name=cluster.s3_secret,
                                     secret_key_to_env={key: env for env, key in cluster.s3_secret_keys.items()})
    return task


def cpu_task(task, cluster: ClusterConfig, *, cache: bool = True):
    """A light task (features, θ0 update, packaging): small CPU/memory requests, any node."""
    task.set_cpu_request(cluster.light_cpu_request).set_memory_request(cluster.light_memory_request)
    return common(task, cluster, cache=cache)


def gpu_task(task, cluster: ClusterConfig, *, cache: bool = True):
    """A training task: the GPU node pool (node selector, toleration), accelerator type and limit,
    CPU/memory requests (and limits when set)."""
    task.set_cpu_request(cluster.cpu_request).set_memory_request(cluster.memory_request)
    if cluster.cpu_limit:
        task.set_cpu_limit(cluster.cpu_limit)
    if cluster.memory_limit:
        task.set_memory_limit(cluster.memory_limit)
    if cluster.accelerator_limit > 0:
        task.set_accelerator_type(cluster.accelerator_type).set_accelerator_limit(cluster.accelerator_limit)
    if cluster.node_selector_key:
        kubernetes.add_node_selector(task, label_key=cluster.node_selector_key, label_value=cluster.node_selector_value)
    if cluster.toleration_key:
        kubernetes.add_toleration(task, key=cluster.toleration_key, operator=cluster.toleration_operator,
                                  value=cluster.toleration_value or None, effect=cluster.toleration_effect)
    return common(task, cluster, cache=cache)
