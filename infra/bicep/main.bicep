// `azd up` entry point: one resource group holding the gateway (Flex Consumption Function App), its storage,
// Service Bus, Key Vault, monitoring and identity; role assignments on the Azure OpenAI / AI Foundry accounts it
// calls; optionally those accounts themselves. One module per concern under modules/. Docs: docs/deploy.md.
targetScope = 'subscription'

// ---------------------------------------------------------------------------------------------------------
// Environment (set by azd)
// ---------------------------------------------------------------------------------------------------------

@description('azd environment name; names the resource group and seeds the unique resource-name suffix.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Region of the gateway and its resources; must offer Flex Consumption (e.g. swedencentral, eastus2, westeurope).')
@minLength(1)
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the developer running azd (AZURE_PRINCIPAL_ID). When set, they get the same storage and Service Bus data roles as the app, to run it locally against these resources. Empty: none.')
param principalId string = ''

@description('Type of principalId (AZURE_PRINCIPAL_TYPE; User unless set): ServicePrincipal when azd runs in CI with a service principal.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Resource group name; empty means rg-<environmentName>.')
param resourceGroupName string = ''

@description('Extra tags for every resource.')
param tags object = {}

// ---------------------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------------------

@description('Comma-separated keys clients must present (api-key or Authorization: Bearer). Stored only in Key Vault; azd prompts for it on the first `azd up`.')
@secure()
@minLength(16)
param gatewayApiKeys string

@description('Existing Azure OpenAI / AI Foundry backends: [{name, endpoint, resourceId?, priority?, weight?, tier?, deployments?}]. Each becomes GATEWAY_BACKEND_<n> with usemi=true (or an api-key Key Vault reference if backendKeys has its name); resourceId, when given, gets the app Cognitive Services OpenAI User on that account.')
param backends array = []

@description('API keys of existing backends by backend name ({"weu": "<key>"}), for accounts that do not accept Microsoft Entra ID yet. Stored in Key Vault. Leave empty for managed identity everywhere.')
@secure()
param backendKeys object = {}

@description('Extra GATEWAY_* settings, e.g. {"GATEWAY_STRATEGY": "latency"}. Names are validated by the app at start-up.')
param gatewaySettings object = {}

@description('Microsoft Entra ID tenant whose tokens the gateway accepts as callers (GATEWAY_ENTRA_TENANT_ID). Empty: gateway keys only.')
param entraTenantId string = ''

@description('Accepted token audiences, comma separated: the gateway app registration\'s Application ID URI and/or client id (GATEWAY_ENTRA_AUDIENCE).')
param entraAudience string = ''

@description('Python version of the Flex Consumption runtime (the one pyproject.toml requires).')
param pythonVersion string = '3.13'

@description('Flex Consumption instance memory in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most HTTP requests one instance serves at once (Flex Consumption perInstanceConcurrency). Without it Flex uses 1 for Python: one instance per in-flight request, however long it streams. The defaults come from the stream-concurrency benchmark (docs/capacity.md): 25 on 512 MB, 100 on 2,048 MB, 200 on 4,096 MB.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = (instanceMemoryMB == 4096) ? 200 : ((instanceMemoryMB == 2048) ? 100 : 25)

@description('Flex Consumption maximum instance count (40-1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Always-ready instances for the HTTP functions; 0 scales to zero (nothing billed at rest), 1+ removes cold starts at a fixed cost.')
@minValue(0)
param alwaysReadyHttpInstances int = 0

@description('Days async results are kept: GATEWAY_PURGE_AFTER_DAYS for the app\'s housekeeping, and a storage lifecycle rule on the results container as a backstop.')
@minValue(1)
param resultsRetentionDays int = 7

@description('Service Bus duplicate detection window (ISO 8601) on the completions topic.')
param duplicateDetectionWindow string = 'PT1H'

// ---------------------------------------------------------------------------------------------------------
// Optional: Azure OpenAI / AI Foundry accounts created with the gateway (none by default)
// ---------------------------------------------------------------------------------------------------------

@description('Accounts to create, one per region: [{location, priority?, weight?, tier?}]. Empty (default): create none and use `backends`. Each gets the deployments in openAiDeployments and a GATEWAY_BACKEND_<n> after the existing backends.')
param openAiAccounts array = []

@description('Kind of the created accounts: AIServices (AI Foundry) or OpenAI.')
@allowed([
  'AIServices'
  'OpenAI'
])
param openAiAccountKind string = 'AIServices'

@description('Model deployments created on every created account: [{name, model, version, sku, capacity}]. The deployment name is also the model alias clients use.')
param openAiDeployments array = [
  {
    name: 'gpt-4o-mini'
    model: 'gpt-4o-mini'
    version: '2024-07-18'
    sku: 'GlobalStandard'
    capacity: 10
  }
]

// ---------------------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------------------

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var allTags = union(tags, {
  'azd-env-name': environmentName
})
var names = {
  resourceGroup: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  identity: 'id-gateway-${resourceToken}'
  logAnalytics: 'log-${resourceToken}'
  applicationInsights: 'appi-${resourceToken}'
  storage: 'st${resourceToken}'
  serviceBus: 'sb-${resourceToken}'
  keyVault: 'kv-${resourceToken}'
  plan: 'plan-${resourceToken}'
  functionApp: 'func-gateway-${resourceToken}'
  deploymentContainer: 'app-package-${resourceToken}'
  resultsContainer: 'gateway-results'
  stateTable: 'gatewaystate'
  completionsTopic: 'completions'
  openAiPrefix: 'ais-${resourceToken}-'
}

// ---------------------------------------------------------------------------------------------------------
// GATEWAY_BACKEND_<n>: existing backends first (1..n), then the created accounts (n+1..n+m)
// ---------------------------------------------------------------------------------------------------------

// Key Vault references inside a backend string are resolved by the gateway itself (README: Backends).
var keyVaultSecretsBase = 'https://${names.keyVault}${environment().suffixes.keyvaultDns}/secrets'

var existingBackendSettings = [for (b, i) in backends: {
  name: 'GATEWAY_BACKEND_${i + 1}'
  value: join([
    'host=${b.endpoint}'
    'mode=direct'
    'processor=OpenAI'
    contains(backendKeys, b.name) ? 'usemi=false;api-key=@Microsoft.KeyVault(SecretUri=${keyVaultSecretsBase}/backend-${b.name})' : 'usemi=true'
    'priority=${b.?priority ?? 1}'
    'weight=${b.?weight ?? 1}'
    empty(b.?tier ?? '') ? '' : 'tier=${b.tier}'
    empty(b.?deployments ?? '') ? '' : 'deployments=${b.deployments}'
    'name=${b.name}'
  ], ';')
}]

var createdBackendSettings = [for (a, i) in openAiAccounts: {
  name: 'GATEWAY_BACKEND_${length(backends) + i + 1}'
  value: join([
    'host=https://${names.openAiPrefix}${a.location}.openai.azure.com'
    'mode=direct'
    'processor=OpenAI'
    'usemi=true'
    'priority=${a.?priority ?? 1}'
    'weight=${a.?weight ?? 1}'
    empty(a.?tier ?? '') ? '' : 'tier=${a.tier}'
    'deployments=${join(map(openAiDeployments, d => d.name), ',')}'
    'name=${a.location}'
  ], ';')
}]

// Loops below iterate over pre-filtered arrays instead of `[for x in y: if (c) {...}]`: same result, and the
// offline parser used by the tests (pycep) does not read filtered loops.
var backendsWithResourceId = filter(backends, b => !empty(b.?resourceId ?? ''))
var developerOpenAiAccounts = empty(principalId) ? [] : openAiAccounts

var backendSettings = toObject(concat(existingBackendSettings, createdBackendSettings), s => s.name, s => s.value)

// ---------------------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------------------

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: names.resourceGroup
  location: location
  tags: allTags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: names.identity
    location: location
    tags: allTags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: names.logAnalytics
    applicationInsightsName: names.applicationInsights
    location: location
    tags: allTags
  }
}

// The operator's workbook over Application Insights: the queries of docs/queries/*.kql as panels.
module workbook 'modules/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: allTags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: names.storage
    location: location
    tags: allTags
    deploymentContainerName: names.deploymentContainer
    resultsContainerName: names.resultsContainer
    stateTableName: names.stateTable
    resultsRetentionDays: resultsRetentionDays
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: names.serviceBus
    location: location
    tags: allTags
    topicName: names.completionsTopic
    duplicateDetectionWindow: duplicateDetectionWindow
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: names.keyVault
    location: location
    tags: allTags
    gatewayApiKeys: gatewayApiKeys
    backendKeys: backendKeys
  }
}

module appRoles 'modules/rbac.bicep' = {
  name: 'rbac-app'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    principalType: 'ServicePrincipal'
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.name
    serviceBusTopicName: serviceBus.outputs.topicName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: keyVault.outputs.name
  }
}

module developerRoles 'modules/rbac.bicep' = if (!empty(principalId)) {
  name: 'rbac-developer'
  scope: rg
  params: {
    principalId: principalId
    principalType: principalType
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.name
    serviceBusTopicName: serviceBus.outputs.topicName
  }
}

// Existing accounts: the app may call them with its identity (accounts may live in any resource group or
// subscription the deployer can assign roles in: /subscriptions/<sub>/resourceGroups/<rg>/providers/...).
module existingAccountAccess 'modules/openai-access.bicep' = [for (b, i) in backendsWithResourceId: {
  name: 'openai-access-existing-${i}'
  scope: resourceGroup(split(b.resourceId, '/')[2], split(b.resourceId, '/')[4])
  params: {
    accountName: last(split(b.resourceId, '/'))
    principalId: identity.outputs.principalId
  }
}]

module openAi 'modules/openai.bicep' = [for (a, i) in openAiAccounts: {
  name: 'openai-${a.location}'
  scope: rg
  params: {
    name: '${names.openAiPrefix}${a.location}'
    location: a.location
    tags: allTags
    kind: openAiAccountKind
    deployments: openAiDeployments
  }
}]

module createdAccountAccess 'modules/openai-access.bicep' = [for (a, i) in openAiAccounts: {
  name: 'openai-access-created-${a.location}'
  scope: rg
  params: {
    accountName: openAi[i].outputs.name
    principalId: identity.outputs.principalId
  }
}]

module createdAccountDeveloperAccess 'modules/openai-access.bicep' = [for (a, i) in developerOpenAiAccounts: {
  name: 'openai-access-developer-${a.location}'
  scope: rg
  params: {
    accountName: openAi[i].outputs.name
    principalId: principalId
    principalType: principalType
  }
}]

module gateway 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: allTags
    pythonVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    alwaysReadyHttpInstances: alwaysReadyHttpInstances
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    stateTableName: storage.outputs.stateTableName
    resultsContainerName: storage.outputs.resultsContainerName
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    completionsTopicName: serviceBus.outputs.topicName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    apiKeysSecretUri: keyVault.outputs.apiKeysSecretUri
    purgeAfterDays: resultsRetentionDays
    backendSettings: backendSettings
    gatewaySettings: gatewaySettings
    entraTenantId: entraTenantId
    entraAudience: entraAudience
  }
  // The app starts as soon as it exists: its identity must already reach storage, Key Vault and the backends,
  // or the host's first start fails and Key Vault references stay unresolved until the next restart.
  dependsOn: [
    appRoles
    existingAccountAccess
    createdAccountAccess
  ]
}

// ---------------------------------------------------------------------------------------------------------
// Outputs (azd stores them in .azure/<env>/.env; docs/deploy.md uses them)
// ---------------------------------------------------------------------------------------------------------

@description('Region of the deployment.')
output AZURE_LOCATION string = location

@description('Tenant of the deployment.')
output AZURE_TENANT_ID string = tenant().tenantId

@description('Resource group holding the gateway.')
output AZURE_RESOURCE_GROUP string = rg.name

@description('Name of the Function App (azd deploys the gateway service to it).')
output AZURE_FUNCTION_APP_NAME string = gateway.outputs.name

@description('Base URL of the gateway: azure_endpoint for AzureOpenAI, <url>/v1 for OpenAI(base_url=...).')
output GATEWAY_URL string = gateway.outputs.url

@description('Client id of the app\'s user-assigned identity.')
output AZURE_CLIENT_ID string = identity.outputs.clientId

@description('Storage account (AzureWebJobsStorage__accountName) for running locally against Azure.')
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name

@description('Service Bus namespace receiving completions.')
output SERVICEBUS_FULLY_QUALIFIED_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace

@description('Completions topic and its default subscription.')
output SERVICEBUS_COMPLETIONS_TOPIC string = serviceBus.outputs.topicName

@description('Subscription on the completions topic.')
output SERVICEBUS_COMPLETIONS_SUBSCRIPTION string = serviceBus.outputs.subscriptionName

@description('Key Vault holding the gateway keys (secret gateway-api-keys).')
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name

@description('Names of the GATEWAY_BACKEND_<n> settings the app got (values are in the app settings).')
output GATEWAY_BACKEND_SETTINGS array = [for s in concat(existingBackendSettings, createdBackendSettings): s.name]

@description('Endpoints of the Azure OpenAI / AI Foundry accounts created by this deployment.')
output OPENAI_CREATED_ENDPOINTS array = [for (a, i) in openAiAccounts: openAi[i].outputs.endpoint]
